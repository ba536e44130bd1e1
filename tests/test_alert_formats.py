"""Each sink's wire format checked against its specification, and the HTTP/TLS transport options
against real listeners on loopback: ECS 8.11 (a committed subset of the field reference), CEF
header/extension escaping, the Splunk HEC envelope and channel, PagerDuty Events v2, syslog over
TLS (RFC 5425), HTTPS through a CONNECT proxy with a CA bundle, Retry-After and dead letters."""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import ssl
import stat
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sensor import synth
from sensor.alerts.dispatch import Dispatcher
from sensor.alerts.incidents import IncidentTracker
from sensor.alerts.schema import ECS_VERSION, AlertContext, build_alert
from sensor.alerts.sinks import (cef_line, cef_message, hec_event, make_sink, pagerduty_event, retry_after)
from sensor.alerts.spool import Spool
from sensor.metrics import Metrics
from tests.conftest import KEY, scan_bytes
from tests.procs import free_port

ECS = json.loads((Path(__file__).parent / "ecs_fields.json").read_text())
RAW_IP = "203.0.113.9"


@pytest.fixture(scope="module")
def result(engine):
    return scan_bytes(engine, synth.breach_csv(50), content_type="text/csv")


def _alert(result, source_ip: str = "hashed", exchange: str = "ex1", resource: str = "site/exports/r.csv") -> dict:
    ctx = AlertContext(exchange_id=exchange, sensor_id="s1", resource=resource,
                       url={"scheme": "https", "domain": "site", "path": "/" + resource.split("/", 1)[1],
                            "original": "https://" + resource}, method="GET", status=200,
                       client_ip=RAW_IP, mode="monitor", action="logged")
    return build_alert(ctx, result, key=KEY, source_ip=source_ip, now=1_700_000_000.0)


def _summary(result, tmp: Path) -> dict:
    """A real summary alert: 10 alerts of one resource through the incident tracker."""
    sp = Spool(tmp / f"summary-{uuid.uuid4().hex[:8]}.db")
    try:
        tr = IncidentTracker(sp.db)
        for i in range(10):
            up = tr.on_alert(_alert(result, exchange=f"x{i}"), 1_700_000_000.0 + i)
        assert up.summary is not None
        return up.summary
    finally:
        sp.close()


# -- ECS ------------------------------------------------------------------------------------------

def _leaves(obj: dict, prefix: str = ""):
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, name + ".")
        else:
            yield name, v


def _is_date(v) -> bool:
    try:
        return isinstance(v, str) and dt.datetime.fromisoformat(v.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def _is_ip(v) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


_TYPES = {"keyword": lambda v: isinstance(v, str), "wildcard": lambda v: isinstance(v, str),
          "long": lambda v: isinstance(v, int) and not isinstance(v, bool), "date": _is_date, "ip": _is_ip}


def ecs_violations(alert: dict) -> list[str]:
    """Every non-dlp field must be in the committed ECS subset, with its type and allowed values."""
    bad = []
    for name, value in _leaves(alert):
        if name.startswith("dlp."):
            continue                                    # the product's own field set
        spec = ECS["fields"].get(name)
        if spec is None:
            bad.append(f"{name}: not an ECS field we checked")
            continue
        values = value if isinstance(value, list) and spec.get("array") else [value]
        for v in values:
            if not _TYPES[spec["type"]](v):
                bad.append(f"{name}: {v!r} is not an ECS {spec['type']}")
            if "allowed" in spec and v not in spec["allowed"]:
                bad.append(f"{name}: {v!r} not among ECS allowed values")
    for t in alert["event"]["type"]:
        for c in alert["event"]["category"]:
            if t not in ECS["categorization"].get(c, [t]):
                bad.append(f"event.type {t} is not expected with event.category {c}")
    return bad


@pytest.mark.parametrize("mode", ["raw", "hashed", "drop"])
def test_alert_fields_match_the_ecs_reference(result, mode):
    a = _alert(result, mode)
    assert a["ecs"]["version"] == ECS_VERSION == ECS["ecs_version"]
    assert ecs_violations(a) == []
    assert "dlp" not in ECS["fields"] and not any(f.startswith("dlp.") for f in ECS["fields"])


def test_summary_alert_fields_match_the_ecs_reference(result, tmp_path):
    s = _summary(result, tmp_path)
    assert ecs_violations(s) == []
    assert s["event"]["start"] == "2023-11-14T22:13:20.000Z" and s["event"]["end"] == "2023-11-14T22:13:29.000Z"


def test_raw_address_only_when_configured_else_the_hash_in_dlp(result):
    raw, hashed, drop = (_alert(result, m) for m in ("raw", "hashed", "drop"))
    assert raw["source"] == {"address": RAW_IP, "ip": RAW_IP} and "client" not in raw["dlp"]
    assert "source" not in hashed and hashed["dlp"]["client"]["hash"].startswith("hmac-sha256:")
    assert RAW_IP not in orjson.dumps(hashed).decode()
    assert "source" not in drop and "client" not in drop["dlp"]
    # the Kafka worker only ever sees the client's keyed hash: it goes in dlp.client.hash, never source.*
    ctx = AlertContext(exchange_id="w1", sensor_id="s1", resource="site/r.csv", url={"original": "https://site/r.csv"},
                       method="GET", status=200, client_ip="", mode="monitor", action="logged")
    for mode in ("raw", "hashed"):
        w = build_alert(ctx, result, key=KEY, source_ip=mode, now=1.0, client_hash="hmac-sha256:ab")
        assert "source" not in w and w["dlp"]["client"] == {"hash": "hmac-sha256:ab"}
    assert "client" not in build_alert(ctx, result, key=KEY, source_ip="drop", now=1.0, client_hash="x")["dlp"]
    from sensor.alerts.schema import to_ocsf
    assert to_ocsf(raw)["src_endpoint"] == {"ip": RAW_IP} and "src_endpoint" not in to_ocsf(drop)
    assert to_ocsf(hashed)["src_endpoint"] == {"uid": hashed["dlp"]["client"]["hash"]}


# -- CEF ------------------------------------------------------------------------------------------

def _cef_parse(msg: str) -> tuple[list[str], dict[str, str]]:
    """A strict reader of the CEF spec: 7 header fields split on unescaped pipes (\\| and \\\\ the
    only escapes), then space-separated key=value pairs whose values escape \\, = and line breaks."""
    assert msg.startswith("CEF:")
    header, i, cur = [], 0, ""
    while len(header) < 7:
        c = msg[i]
        if c == "\\":
            assert msg[i + 1] in "|\\", f"bad header escape at {i}"
            cur += msg[i + 1]
            i += 2
            continue
        if c == "|":
            header.append(cur)
            cur = ""
        else:
            assert c not in "\r\n"
            cur += c
        i += 1
    ext_text = msg[i:]
    assert "\n" not in ext_text and "\r" not in ext_text
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", ext_text))
    ext = {}
    for n, m in enumerate(keys):
        end = keys[n + 1].start() if n + 1 < len(keys) else len(ext_text)
        raw = ext_text[m.end():end]
        assert re.search(r"(?<!\\)(?:\\\\)*=", raw) is None, f"unescaped '=' in {m.group(1)}"
        ext[m.group(1)] = re.sub(r"\\(.)", lambda e: {"n": "\n", "r": "\r"}.get(e.group(1), e.group(1)), raw)
    return header, ext


def test_cef_escapes_hostile_header_and_extension_values(result):
    a = _alert(result, resource="site/x=1\\y|z")
    a["rule"]["name"] = "pipe|back\\slash\nnew=line"
    a["url"]["original"] = "https://site/a=b\\c\nd\re|f"
    a["dlp"]["exchange_id"] = "id with spaces=and\\more"
    line = cef_line(a, "host1").decode()
    assert line.startswith("<162>1 2023-11-14T22:13:20.000Z host1 dlp-sensor - - - CEF:0|dlp-sensor|dlp-sensor|")
    assert "\n" not in line and "\r" not in line
    header, ext = _cef_parse(cef_message(a))
    assert header[0] == "CEF:0" and header[4] == "dlp.trip" and header[6] == "10"
    assert header[5] == "pipe|back\\slash new=line"             # a header cannot span lines
    assert ext["request"] == "https://site/a=b\\c\nd\re|f"        # exact round trip
    assert ext["cs1"] == "site/x=1\\y|z" and ext["cs2"] == "id with spaces=and\\more"
    assert ext["rt"] == "1700000000000"                           # CEF date: ms since the epoch
    assert ext["externalId"] == a["dlp"]["dedup_id"] and ext["cs4Label"] == "clientHash"
    assert ext["cs5"] == a["dlp"]["incident"]["id"] and "src" not in ext
    assert _cef_parse(cef_message(_alert(result, "raw")))[1]["src"] == RAW_IP


def test_cef_summary_carries_count_and_window(result, tmp_path):
    s = _summary(result, tmp_path)
    _, ext = _cef_parse(cef_message(s))
    assert ext["cnt"] == "10" and ext["start"] == "1700000000000" and ext["end"] == "1700000009000"


# -- receivers --------------------------------------------------------------------------------------

def _cert(name: str, issuer: tuple | None = None, *, ca: bool = False, sans: tuple = ()) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[0].subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    ca = _cert("dlp test CA", ca=True)
    server = _cert("localhost", ca, sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))
    client = _cert("dlp-sensor", ca)
    out = {}
    for name, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        out[name] = d / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[name + "_key"] = d / f"{name}.key"
        out[name + "_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out


class Receiver:
    """An aiohttp receiver on loopback; ``answers`` is a queue of (status, headers) to give before 200s."""

    def __init__(self, answers: list[tuple[int, dict]] | None = None):
        self.got: list[tuple[str, str, dict, dict]] = []       # (host, path, headers, body)
        self.times: list[float] = []
        self.answers = list(answers or [])
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.times.append(time.monotonic())
        if self.answers:
            status, headers = self.answers.pop(0)
            return web.Response(status=status, headers=headers, text="no")
        self.got.append((request.host, request.path, dict(request.headers), orjson.loads(body)))
        return web.json_response({"text": "Success", "code": 0})

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ssl_context).start()
        return f"{'https' if ssl_context else 'http'}://{'localhost' if ssl_context else '127.0.0.1'}:{port}"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


async def _deliver(sinks, alerts, tmp_path, until, *, metrics=None, **kw) -> Dispatcher:
    d = Dispatcher(Spool(tmp_path / f"spool-{uuid.uuid4().hex[:8]}.db"), sinks, metrics=metrics, **kw)
    await d.start()
    try:
        for a in alerts:
            d.submit(a)
        deadline = time.monotonic() + 20
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await d.stop()
    return d


@pytest.fixture
def no_proxy_env(monkeypatch):
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


# -- Splunk HEC -------------------------------------------------------------------------------------

async def test_hec_envelope_time_and_one_channel_per_sink(result, tmp_path, no_proxy_env):
    a1, a2 = _alert(result, exchange="h1"), _alert(result, exchange="h2", resource="site/other.csv")
    env = hec_event(a1, a1, {"index": "dlp"})
    assert set(env) <= {"time", "host", "source", "sourcetype", "index", "event", "fields"}
    assert env["time"] == 1_700_000_000.0 and isinstance(env["event"], dict) and env["index"] == "dlp"
    rx = Receiver()
    base = await rx.start()
    sinks = [make_sink({"type": "splunk_hec", "url": base, "token": "t"}, "s0"),
             make_sink({"type": "splunk_hec", "name": "hec2", "url": base + "/services/collector/event",
                        "token": "t", "format": "ocsf"}, "s1")]
    await _deliver(sinks, [a1, a2], tmp_path, lambda: len(rx.got) == 4)
    await rx.stop()
    assert len(rx.got) == 4
    by_sink: dict[str, set[str]] = {}
    for _, path, h, body in rx.got:
        assert path == "/services/collector/event" and h["Authorization"] == "Splunk t"
        assert body["time"] == 1_700_000_000.0 and body["host"] == "s1" and body["sourcetype"] == "dlp:alert"
        kind = "ocsf" if "class_uid" in body["event"] else "ecs"
        by_sink.setdefault(kind, set()).add(h["X-Splunk-Request-Channel"])
    assert len(by_sink["ecs"]) == 1 and len(by_sink["ocsf"]) == 1 and by_sink["ecs"] != by_sink["ocsf"]
    for ch in by_sink["ecs"] | by_sink["ocsf"]:
        uuid.UUID(ch)


# -- PagerDuty Events v2 ----------------------------------------------------------------------------

def _check_pd_event(ev: dict) -> None:
    """The documented shape of an Events API v2 trigger."""
    assert set(ev) <= {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client",
                       "client_url"}
    assert isinstance(ev["routing_key"], str) and len(ev["routing_key"]) == 32
    assert ev["event_action"] in ("trigger", "acknowledge", "resolve")
    assert isinstance(ev["dedup_key"], str) and 0 < len(ev["dedup_key"]) <= 255
    p = ev["payload"]
    assert set(p) <= {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
    assert isinstance(p["summary"], str) and 0 < len(p["summary"]) <= 1024
    assert isinstance(p["source"], str) and p["source"]
    assert p["severity"] in ("critical", "error", "warning", "info")
    assert _is_date(p["timestamp"]) and isinstance(p["custom_details"], dict)


def test_pagerduty_event_matches_events_v2_and_dedups_per_incident(result, tmp_path):
    a1, a2 = _alert(result, exchange="p1"), _alert(result, exchange="p2")
    s = _summary(result, tmp_path)
    evs = [pagerduty_event(x, "R" * 32) for x in (a1, a2, s)]
    for ev in evs:
        _check_pd_event(ev)
    assert {ev["dedup_key"] for ev in evs} == {a1["dlp"]["incident"]["id"]}
    assert evs[0]["payload"]["severity"] == "critical" and "requested 10 times" in evs[2]["payload"]["summary"]


# -- HTTP transport: proxy, CA bundle, Retry-After, dead letters ----------------------------------

async def _connect_proxy(seen: list[str]) -> tuple[asyncio.AbstractServer, int]:
    """A minimal HTTP CONNECT proxy: records each CONNECT target and pipes bytes both ways."""
    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        seen.append(f"{method} {target}")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        ur, uw = await asyncio.open_connection("127.0.0.1" if host == "localhost" else host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    port = free_port()
    return await asyncio.start_server(handle, "127.0.0.1", port), port


async def test_https_webhook_through_https_proxy_with_a_ca_bundle(result, tmp_path, pki, no_proxy_env):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    rx = Receiver()
    base = await rx.start(server_ctx)
    seen: list[str] = []
    proxy, pport = await _connect_proxy(seen)
    no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{pport}")
    m = Metrics()
    ok = make_sink({"type": "webhook", "url": base + "/hook", "ca_file": str(pki["ca"])}, "s0")
    await _deliver([ok], [_alert(result)], tmp_path, lambda: rx.got, metrics=m)
    assert len(rx.got) == 1 and rx.got[0][1] == "/hook"
    assert seen == [f"CONNECT {base.split('//')[1]}"]              # it went through the proxy
    # without the CA bundle the receiver's certificate is not trusted: a retried failure, not a delivery
    bad = make_sink({"type": "webhook", "name": "untrusted", "url": base + "/hook"}, "s1")
    await _deliver([bad], [_alert(result, exchange="u1")], tmp_path,
                   lambda: m.alert_delivery_failures.labels(sink="untrusted")._value.get() >= 1, metrics=m,
                   retry_initial=5.0)
    assert len(rx.got) == 1 and m.alert_delivery_failures.labels(sink="untrusted")._value.get() >= 1
    proxy.close()
    await rx.stop()


async def test_http_proxy_is_used_and_no_proxy_bypasses_it(result, tmp_path, no_proxy_env):
    proxy_rx, direct_rx = Receiver(), Receiver()
    proxy_base, direct_base = await proxy_rx.start(), await direct_rx.start()
    no_proxy_env.setenv("HTTP_PROXY", proxy_base)
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    sinks = [make_sink({"type": "webhook", "name": "via-proxy", "url": "http://siem.invalid/hook"}, "s0"),
             make_sink({"type": "webhook", "name": "direct", "url": direct_base + "/direct"}, "s1")]
    await _deliver(sinks, [_alert(result)], tmp_path, lambda: proxy_rx.got and direct_rx.got)
    await proxy_rx.stop()
    await direct_rx.stop()
    assert [(h, p) for h, p, _, _ in proxy_rx.got] == [("siem.invalid", "/hook")]   # absolute-form via the proxy
    assert [p for _, p, _, _ in direct_rx.got] == ["/direct"]


def test_retry_after_seconds_and_http_date():
    assert retry_after("7") == 7.0 and retry_after("999999") == 3600.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


async def test_retry_after_is_honoured_on_429(result, tmp_path, no_proxy_env):
    """The receiver says 429 + Retry-After: 1 to the first alert of a batch of three: nothing more is
    sent to it for that second (the rest of the batch waits too), then all three arrive."""
    rx = Receiver([(429, {"Retry-After": "1"})])
    base = await rx.start()
    sink = make_sink({"type": "webhook", "url": base + "/h"}, "s")
    d = Dispatcher(Spool(tmp_path / "spool.db"), [sink], retry_initial=0.01, retry_max=0.02)
    for i in range(3):                                  # spooled before the sender starts: one leased batch
        await d.submit(_alert(result, exchange=f"r{i}", resource=f"site/exports/r{i}.csv"))   # three incidents
    await d.start()
    deadline = time.monotonic() + 20
    while len(rx.got) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await d.stop()
    await rx.stop()
    assert len(rx.got) == 3 and len(rx.times) == 4
    assert rx.times[1] - rx.times[0] >= 0.9            # waited as asked, not the 10-20 ms backoff


async def test_permanent_refusal_goes_to_the_dead_letter_file(result, tmp_path, no_proxy_env):
    rx = Receiver([(400, {}), (408, {}), (404, {})])
    base = await rx.start()
    m = Metrics()
    a = _alert(result)
    sink = make_sink({"type": "webhook", "url": base + "/h"}, "s")
    d = await _deliver([sink], [a], tmp_path,
                       lambda: m.alerts_dead_lettered.labels(sink="webhook")._value.get() >= 1,
                       metrics=m, retry_initial=0.01, retry_max=0.02)
    assert m.alerts_dead_lettered.labels(sink="webhook")._value.get() == 1 and len(rx.times) == 1
    dl = d.spool.dead_letter_path
    assert dl.parent == tmp_path and stat.S_IMODE(dl.stat().st_mode) == 0o600
    [rec] = [orjson.loads(line) for line in dl.read_bytes().splitlines()]
    assert rec["sink"] == "webhook" and rec["error"].startswith("HTTP 400") and rec["alert"] == a
    assert d.spool.depth() == 0
    # 408 is transient (retried), 404 permanent again: a second alert is dead-lettered after one retry
    d2 = await _deliver([sink], [_alert(result, exchange="e2")], tmp_path,
                        lambda: m.alerts_dead_lettered.labels(sink="webhook")._value.get() >= 2,
                        metrics=m, retry_initial=0.01, retry_max=0.02)
    assert len(rx.times) == 3 and d2.spool.dead_letter_path == dl and len(dl.read_bytes().splitlines()) == 2
    await rx.stop()


async def test_dead_letter_off_keeps_retrying(result, tmp_path, no_proxy_env):
    rx = Receiver([(401, {}), (401, {})])
    base = await rx.start()
    m = Metrics()
    sink = make_sink({"type": "webhook", "url": base + "/h", "dead_letter": False}, "s")
    await _deliver([sink], [_alert(result)], tmp_path, lambda: rx.got, metrics=m, retry_initial=0.01,
                   retry_max=0.02)
    await rx.stop()
    assert len(rx.got) == 1 and len(rx.times) == 3
    assert m.alerts_dead_lettered.labels(sink="webhook")._value.get() == 0


# -- syslog over TLS (RFC 5425) -----------------------------------------------------------------------

async def test_syslog_over_tls_with_client_certificate(result, tmp_path, pki):
    got: list[bytes] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED                      # mutual TLS: the sink must show its cert

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got.append(await reader.read())
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(on_conn, "127.0.0.1", port, ssl=server_ctx)
    sink = make_sink({"type": "syslog", "host": "localhost", "port": port, "tls": True, "ca_file": str(pki["ca"]),
                      "certfile": str(pki["client"]), "keyfile": str(pki["client_key"])}, "s")
    a = _alert(result)
    await _deliver([sink], [a, _alert(result, exchange="t2")], tmp_path, lambda: len(got) == 2)
    server.close()
    assert len(got) == 2
    for frame in got:
        size, _, msg = frame.partition(b" ")                       # RFC 5425 octet counting
        assert int(size) == len(msg) and msg.startswith(b"<162>1 ") and b"CEF:0|dlp-sensor|" in msg
    from sensor.alerts.sinks import DeliveryError
    untrusting = make_sink({"type": "syslog", "host": "localhost", "port": port, "tls": True}, "s2")
    server = await asyncio.start_server(on_conn, "127.0.0.1", port, ssl=server_ctx)
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusting.deliver(a)                                 # system CAs do not know the test CA
    server.close()


@pytest.mark.parametrize("raw, key", [
    ({"type": "webhook", "url": "http://x", "ca_file": "/nonexistent.pem"}, "s.ca_file"),
    ({"type": "syslog", "tls": True, "protocol": "udp"}, "s.protocol"),
    ({"type": "syslog", "tls": "yes"}, "s.tls"),
    ({"type": "syslog", "tls": True, "certfile": "/nonexistent.pem"}, "s.certfile"),
    ({"type": "syslog", "tls": True, "keyfile": "/etc/hostname"}, "s.keyfile"),
    ({"type": "webhook", "url": "http://x", "dead_letter": "no"}, "s.dead_letter"),
    ({"type": "webhook", "url": "http://x", "every_alert": 1}, "s.every_alert"),
])
def test_sink_option_errors_name_the_key(raw, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        make_sink(raw, "s")


def test_null_options_mean_the_defaults():
    s = make_sink({"type": "pagerduty", "routing_key": "R" * 32, "ca_file": None, "dead_letter": None,
                   "throttle": None, "every_alert": None}, "s")
    assert (s.tls, s.dead_letter, s.throttle, s.every_alert) == (None, True, 300.0, False)
    t = make_sink({"type": "syslog", "tls": None, "certfile": None, "keyfile": None, "ca_file": None}, "t")
    assert t.every_alert and t.tls is None and "tls" not in t.options


def test_ca_file_that_is_not_a_certificate_is_refused(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"s\.ca_file: unusable"):
        make_sink({"type": "webhook", "url": "http://x", "ca_file": str(junk)}, "s")
