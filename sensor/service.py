"""Start and stop a sensor process: the taps' listeners, the metrics port and the admin port."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import sys
from dataclasses import dataclass, field

from aiohttp import web

from sensor.config import Config
from sensor.enforce.admin import admin_app
from sensor.metrics.server import metrics_app
from sensor.runtime import Sensor
from sensor.taps.connections import (CappedServer, accept_backlog, connection_budget, install_accept_error_handler,
                                     raise_fd_limit)
from sensor.taps.proxy.server import Proxy

GIL_SWITCH_SECONDS = 0.0005

log = logging.getLogger("dlp_sensor")


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Running:
    sensor: Sensor
    proxy: Proxy
    runners: list[web.AppRunner] = field(default_factory=list)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    grpc: list = field(default_factory=list)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    async def stop(self) -> None:
        self.sensor.ready = False
        for srv in self.servers:
            srv.close()
        for g in self.grpc:
            await g.stop(grace=2)
        for r in reversed(self.runners):
            await r.cleanup()
        await self.proxy.stop()
        await self.sensor.stop()


async def _site(app: web.Application | web.Server, hostport: str, *, ssl_context=None,
                reuse_port: bool = False, backlog: int = 1024) -> tuple[web.BaseRunner, tuple[str, int]]:
    runner = web.ServerRunner(app, access_log=None) if isinstance(app, web.Server) else \
        web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = _split(hostport)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None,
                       backlog=backlog)
    await site.start()
    sock = site._server.sockets[0]                      # the real port when 0 was asked for
    return runner, sock.getsockname()[:2]


async def start_proxy(config: Config, *, reuse_port: bool = False, sensor: Sensor | None = None) -> Running:
    return await start(config, taps=("proxy",), reuse_port=reuse_port, sensor=sensor)


async def start(config: Config, *, taps: tuple[str, ...], reuse_port: bool = False,
                sensor: Sensor | None = None) -> Running:
    """One sensor process: shared state, the given taps' listeners, metrics and admin."""
    raise_fd_limit()
    install_accept_error_handler(asyncio.get_running_loop())
    sensor = sensor or Sensor(config)
    gc.collect()
    gc.freeze()             # start-up objects (engine, pack) never die: keep full GC passes off them
    await sensor.start()
    sensor.metrics.expect(taps=taps, sinks=[s.name for s in sensor.dispatcher.sinks],
                          signatures=[sig.id for sig in sensor.detector.engine.signatures],
                          kafka=[c for c, part in (("fleet", sensor.fleet), ("mirror", sensor.mirror)) if part])
    proxy = Proxy(sensor)
    await proxy.start()
    run = Running(sensor, proxy)
    ctx = None
    if config.proxy.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(config.proxy.tls_cert, config.proxy.tls_key)
    if "proxy" in taps:
        # keepalive_timeout: aiohttp arms it when a connection is made and again after each response,
        # and closes the connection if no complete request head has arrived by then: it is both the
        # header-read timeout (a slow or half-open client) and the keep-alive idle timeout.
        server = CappedServer(proxy.handle, max_connections=connection_budget(config.proxy.max_connections),
                              access_log=None, max_field_size=16 << 10, max_line_size=16 << 10,
                              handler_cancellation=True, keepalive_timeout=config.proxy.idle_timeout)
        r, addr = await _site(server, config.proxy.listen, ssl_context=ctx, reuse_port=reuse_port,
                              backlog=accept_backlog(server.max_connections))
        run.runners.append(r)
        run.addresses["proxy"] = addr
    if "extproc" in taps:
        from sensor.taps.extproc.server import start_extproc
        grpc_server = await start_extproc(sensor, config.extproc.listen)
        run.grpc.append(grpc_server)
        run.addresses["extproc"] = (_split(config.extproc.listen)[0], grpc_server.bound_port)
    if "icap" in taps:
        from sensor.taps.icap.server import IcapServer
        icap = IcapServer(sensor, max_connections=connection_budget(config.icap.max_connections),
                          options_ttl=config.icap.options_ttl, idle_timeout=config.icap.idle_timeout,
                          read_timeout=config.icap.read_timeout)
        host, port = _split(config.icap.listen)
        srv = await icap.start(host, port)
        run.servers.append(srv)
        run.addresses["icap"] = srv.sockets[0].getsockname()[:2]
    if config.metrics:
        # a proxy is ready only while its app answers connections (else it would serve only 502s)
        upstream = config.proxy.upstream if "proxy" in taps else None
        r, addr = await _site(metrics_app(sensor, upstream=upstream), config.metrics)
        run.runners.append(r)
        run.addresses["metrics"] = addr
    if config.admin:
        r, addr = await _site(admin_app(sensor), config.admin)
        run.runners.append(r)
        run.addresses["admin"] = addr
    return run


async def serve_forever(config: Config, *, taps: tuple[str, ...] = ("proxy",), reuse_port: bool = False) -> None:
    # A PDF's text extraction runs in a thread, pure Python, holding the GIL. The event loop waits up
    # to the switch interval for the GIL on every wake-up, and answering one ext_proc message takes
    # dozens of wake-ups: at the default 5 ms, requests stalled past Envoy's 200 ms message timeout
    # while a PDF was read. 0.5 ms bounds each wait; the thread loses a little throughput.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    run = await start(config, taps=taps, reuse_port=reuse_port)
    for name, (h, p) in run.addresses.items():
        log.info("%s listening on %s:%d", name, h, p)
    log.info("ready: %s, mode %s, signatures generation %s", ", ".join(taps), config.proxy.mode,
             run.sensor.detector.generation)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining connections")
    await run.stop()
