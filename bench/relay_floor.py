"""The floor of relaying bytes through user space: a bare TCP relay, no HTTP, no scan.

``bench/proxy.py`` runs it beside the sidecar and reads its CPU per 100 MB: what moving a
download's bytes origin -> process -> client costs on this machine's loopback (two kernel copies,
the TCP stack on both sockets, a recv and a send per 256 KiB), before any parsing, hand-off or
scanning. The raw scan's time plus this floor bounds what any sidecar that reads the bytes it
scans can reach per core; what is left of the 0.8x budget after it is what HTTP, the scan
hand-off and the scanner's own Python may cost.

Blocking sockets, one thread per direction per connection: the cheapest relay Python can write
(the GIL is released for every recv and send, and there is one Python call per 256 KiB).

    python bench/relay_floor.py LISTEN_PORT UPSTREAM_PORT
"""
from __future__ import annotations

import socket
import sys
import threading

READ = 256 << 10        # the sidecar's read size (sensor/taps/proxy/server.py READ_CHUNK)


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(READ):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen: int, upstream: int) -> None:
    ls = socket.create_server(("127.0.0.1", listen), backlog=64)
    while True:
        client, _ = ls.accept()
        up = socket.create_connection(("127.0.0.1", upstream))
        for a, b in ((client, up), (up, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
