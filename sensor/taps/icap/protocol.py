"""ICAP (RFC 3507) framing: request heads, Encapsulated offsets, chunked bodies, responses.

Hand-written on purpose: no maintained Python ICAP library exists, and the protocol needed here
is small (OPTIONS and RESPMOD, Preview with ieof, Allow: 204). Every malformed input raises
:class:`IcapError` with the status to answer; nothing here ever echoes body bytes in a message.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 64 << 10             # ICAP head, and each encapsulated HTTP head
MAX_CHUNK = 1 << 40             # a declared chunk size is only a count: the data is read in PIECEs
PIECE = 64 << 10                # the most of a body held from one read


class IcapError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class IcapTimeout(IcapError):
    """The client stalled: the connection is dropped (an answer could land inside an echo)."""

    def __init__(self, reason: str):
        super().__init__(408, reason)


@dataclass
class IcapRequest:
    method: str
    uri: str
    headers: dict[str, str]
    sections: dict[str, bytes] = field(default_factory=dict)    # req-hdr / res-hdr bytes
    body_kind: str = "null-body"                                 # res-body | req-body | null-body

    @property
    def preview(self) -> int | None:
        v = self.headers.get("preview")
        return int(v) if v is not None and v.strip().isdigit() else None

    @property
    def allow_204(self) -> bool:
        return "204" in [a.strip() for a in self.headers.get("allow", "").split(",")]


def _headers(lines: list[bytes], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or name != name.strip():
            raise IcapError(400, f"malformed {where} header line")
        out[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return out


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The ICAP head up to the blank line; None at a clean end of connection."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise IcapError(400, "truncated ICAP head") from None
    except asyncio.LimitOverrunError:
        raise IcapError(400, f"ICAP head larger than {MAX_HEAD} bytes") from None


def parse_head(head: bytes) -> IcapRequest:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"ICAP/"):
        raise IcapError(400, "malformed ICAP request line")
    if parts[2] != b"ICAP/1.0":
        raise IcapError(505, "only ICAP/1.0 is spoken")
    return IcapRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"), _headers(lines[1:], "ICAP"))


def parse_encapsulated(value: str) -> list[tuple[str, int]]:
    """``req-hdr=0, res-hdr=137, res-body=296`` -> ordered (name, offset); validated."""
    out = []
    for item in value.split(","):
        name, sep, off = item.strip().partition("=")
        if not sep or not off.strip().isdigit() or name not in ("req-hdr", "res-hdr", "req-body", "res-body",
                                                                 "null-body", "opt-body"):
            raise IcapError(400, "malformed Encapsulated header")
        out.append((name, int(off)))
    offsets = [o for _, o in out]
    if not out or offsets != sorted(offsets) or offsets[0] != 0 or not out[-1][0].endswith("body"):
        raise IcapError(400, "Encapsulated offsets out of order or without a body entity")
    return out


async def read_sections(reader: asyncio.StreamReader, req: IcapRequest, timeout: float | None = None) -> None:
    """The encapsulated HTTP heads (bounded), read within ``timeout`` seconds."""
    enc = req.headers.get("encapsulated")
    if enc is None:
        raise IcapError(400, "missing Encapsulated header")
    entities = parse_encapsulated(enc)
    total = entities[-1][1]
    if total > 2 * MAX_HEAD:
        raise IcapError(400, "encapsulated HTTP heads too large")
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readexactly(total)
    except asyncio.IncompleteReadError:
        raise IcapError(400, "truncated encapsulated HTTP heads") from None
    except TimeoutError:
        raise IcapTimeout("the client stalled inside the encapsulated heads") from None
    for (name, start), (_, end) in zip(entities, entities[1:]):
        req.sections[name] = raw[start:end]
    req.body_kind = entities[-1][0]


class ChunkReader:
    """One request's chunked body, handed out in pieces of at most ``PIECE`` bytes whatever size a
    chunk declares: a client announcing 16 MiB chunks costs 64 KiB of memory, not 16 MiB. Each
    :meth:`read` must complete within ``timeout`` seconds (a stalled client is dropped)."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float | None = None):
        self.reader = reader
        self.timeout = timeout
        self.left = 0                   # bytes of the current chunk not read yet

    async def read(self) -> tuple[bytes, bool, bool]:
        """(data, last, ieof): the next piece of the body; ``last`` at its terminating chunk."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._read()
        except TimeoutError:
            raise IcapTimeout("the client stalled inside a body") from None

    async def _read(self) -> tuple[bytes, bool, bool]:
        reader = self.reader
        try:
            if self.left == 0:
                try:
                    line = await reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError:
                    raise IcapError(400, "chunk header too long") from None
                size_s, _, ext = line[:-2].partition(b";")
                try:
                    size = int(size_s.strip(), 16)
                except ValueError:
                    raise IcapError(400, "malformed chunk size") from None
                if size < 0 or size > MAX_CHUNK:
                    raise IcapError(400, "chunk size out of range")
                if size == 0:
                    if await reader.readexactly(2) != b"\r\n":
                        raise IcapError(400, "missing CRLF after the last chunk")
                    return b"", True, b"ieof" in ext
                self.left = size
            data = await reader.readexactly(min(self.left, PIECE))
            self.left -= len(data)
            if self.left == 0 and await reader.readexactly(2) != b"\r\n":
                raise IcapError(400, "chunk longer than its size")
        except asyncio.IncompleteReadError:
            raise IcapError(400, "body ended inside a chunk") from None
        return data, False, False


def http_head(raw: bytes) -> tuple[str, dict[str, str]]:
    """(first line, lower-cased headers) of an encapsulated HTTP head."""
    lines = raw.rstrip(b"\r\n").split(b"\r\n")
    if not lines or not lines[0]:
        raise IcapError(400, "empty encapsulated HTTP head")
    return lines[0].decode("latin-1"), _headers(lines[1:], "HTTP")


def response(status: int, reason: str, headers: dict[str, str], encapsulated: str = "null-body=0") -> bytes:
    lines = [f"ICAP/1.0 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Encapsulated: {encapsulated}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
