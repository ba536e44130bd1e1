"""An open-loop HTTP/1.1 client: GET ``url`` at a fixed rate, latency from the *scheduled* send time.

Why not wrk alone: wrk is closed-loop (each connection sends its next request when the last answer
arrives). With ``-c4`` on two cores it saturates the sidecar, so its p99 is mostly the queue that
wrk itself builds, and when the server stalls wrk stops sending: the stalled period yields one
slow sample instead of the many requests that real clients would have sent meanwhile (coordinated
omission). Real "other clients" arrive at their own rate whatever the server does.

Here request ``i`` is due at ``t0 + i / rate``, decided before the run. It goes out on an idle
keep-alive connection, or a new one when all are busy (up to ``--max-conns``; past that it waits
for one, and the wait counts). Its latency is ``answer complete - due time``, so a stall of the
server, or of this client, counts for every request that fell due during it (as wrk2 does).
``client_stall_max``: the longest this client itself woke late from a timed wait (the machine
not running it; on a shared VM the same stall hits the server too): read p99s against it.
One thread, ``selectors`` and raw sockets: a few µs of client CPU per request, so the client
barely competes with the sidecar for the cores. The same client against the origin directly
gives the floor of the machine and the client.

    python bench/openloop.py URL [--rate 200] [--seconds 6] [--max-conns 64]   # prints JSON
"""
from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Conn:
    """One keep-alive connection and the request in flight on it (its due time), if any."""
    sock: socket.socket
    connected: bool = False
    due: float | None = None
    buf: bytearray = field(default_factory=bytearray)
    need: int = -1            # body bytes still expected (-1: headers not complete yet)
    chunked: bool = False


def quantile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (nan when empty)."""
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, max(0, int(round(q * len(sorted_ms) + 0.5)) - 1))]


def run(url: str, rate: float, seconds: float, max_conns: int = 64) -> dict:
    """GET ``url`` ``rate`` times a second for ``seconds``; latency quantiles in ms, from due times."""
    u = urlsplit(url)
    addr = (u.hostname or "127.0.0.1", u.port or 80)
    request = (f"GET {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n"
               f"Host: {u.netloc}\r\nUser-Agent: openloop\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    idle: list[Conn] = []
    conns: list[Conn] = []
    waiting: list[float] = []                   # due times with no connection free (max_conns reached)
    lat: list[float] = []
    errors = 0
    why: dict[str, int] = {}                    # errors by kind: "status 503", "connect", "closed"
    n_total = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    sent = 0
    peak = [0]
    stalls: list[float] = []                    # how late each timed-out wait returned (s)

    def start(c: Conn, due: float) -> None:
        c.due, c.buf, c.need, c.chunked = due, bytearray(), -1, False
        if c.connected:
            c.sock.send(request)                # 100-odd bytes on an idle socket: never partial
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def open_conn(due: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn(s)
        conns.append(c)
        peak[0] = max(peak[0], len(conns))
        s.connect_ex(addr)
        sel.register(s, selectors.EVENT_WRITE, c)
        start(c, due)

    def drop(c: Conn) -> None:
        sel.unregister(c.sock)
        c.sock.close()
        conns.remove(c)
        if c in idle:
            idle.remove(c)

    def dispatch(due: float) -> None:
        if idle:
            start(idle.pop(), due)
        elif len(conns) < max_conns:
            open_conn(due)
        else:
            waiting.append(due)

    def finished(c: Conn, now: float) -> None:
        assert c.due is not None
        lat.append((now - c.due) * 1000)
        c.due = None
        if waiting:
            start(c, waiting.pop(0))
        else:
            idle.append(c)

    def on_data(c: Conn, data: bytes, now: float) -> None:
        nonlocal errors
        c.buf += data
        if c.need < 0:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(c.buf[:end]).decode("latin-1").lower()
            if not head.startswith("http/1.1 200"):
                errors += 1
                kind = "status " + head[9:12]
                why[kind] = why.get(kind, 0) + 1
            del c.buf[:end + 4]
            c.chunked = "transfer-encoding: chunked" in head
            c.need = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    c.need = int(line.split(":", 1)[1])
        if c.chunked:
            if c.buf.endswith(b"0\r\n\r\n"):     # the last chunk (a 10 KiB page has no trailers)
                finished(c, now)
        elif len(c.buf) >= c.need:
            finished(c, now)

    while True:
        now = time.perf_counter()
        while sent < n_total and t0 + sent / rate <= now:
            dispatch(t0 + sent / rate)
            sent += 1
        busy = any(c.due is not None for c in conns) or waiting
        if sent >= n_total and not busy:
            break
        nxt = t0 + sent / rate if sent < n_total else now + 1.0
        before = time.perf_counter()
        wait = max(0.0, nxt - before)
        events = sel.select(wait)
        if not events:                          # woken late for nothing: this process was not running
            late = time.perf_counter() - before - wait
            stalls.append(late)
        for key, ev in events:
            c: Conn = key.data
            now = time.perf_counter()
            if ev & selectors.EVENT_WRITE and not c.connected:
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    errors += 1
                    why["connect"] = why.get("connect", 0) + 1
                    due = c.due
                    drop(c)
                    if due is not None:
                        lat.append((now - due) * 1000)
                    continue
                c.connected = True
                if c.due is not None:
                    start(c, c.due)
                continue
            try:
                data = c.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:                        # closed by the server: count, and forget it
                due = c.due
                drop(c)
                if due is not None:
                    errors += 1
                    why["closed"] = why.get("closed", 0) + 1
                    dispatch(due)               # the same request again, still from its due time
                continue
            on_data(c, data, now)
        if time.perf_counter() - t0 > seconds + 120:
            break
    for c in list(conns):
        drop(c)
    lat.sort()
    return {"rate": rate, "requests": len(lat), "errors": errors, "errors_by_kind": why, "conns": peak[0],
            "p50": quantile(lat, 0.50), "p90": quantile(lat, 0.90), "p99": quantile(lat, 0.99),
            "p999": quantile(lat, 0.999), "max": lat[-1] if lat else float("nan"),
            "client_stall_max": max(stalls, default=0.0) * 1000,
            "client_stalled_ms": sum(x for x in stalls if x > 0.005) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=200, help="requests per second")
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--max-conns", type=int, default=64)
    a = ap.parse_args()
    print(json.dumps(run(a.url, a.rate, a.seconds, a.max_conns)))


if __name__ == "__main__":
    main()
