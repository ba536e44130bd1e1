"""Streaming decoders: the Content-Encodings gzip, deflate (zlib or raw), br, zstd, stacked; and
xz and bzip2, which arrive only as files (see :mod:`sensor.decode.containers`)."""
from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol

import brotli
import zstandard

from sensor.decode.limits import Budget, CorruptInput


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class _Stage:
    def __init__(self, sink: Sink, budget: Budget):
        self.sink = sink
        self.budget = budget
        self.piece = budget.limits.piece
        self.truncated = False
        self.drained = False

    def drain(self) -> None:
        """Decode what is still buffered into the sink without closing it: a container at the end
        of the chain can then be read in a thread before :meth:`close` finishes the body."""
        if not self.drained:
            self.drained = True
            self._flush()

    def _flush(self) -> None:
        """The end of input: emit what the decoder still holds, note whether the stream was cut."""

    def close(self) -> None:
        self.drain()
        self.sink.close()

    def _out(self, data: bytes) -> None:
        if data:
            self.budget.take(len(data))
            self.sink.write(data)


class GzipDecoder(_Stage):
    """gzip (RFC 1952), including concatenated members; also zlib / raw deflate via ``wbits``."""

    name = "gzip"

    def __init__(self, sink: Sink, budget: Budget, wbits: int = 31):
        super().__init__(sink, budget)
        self.wbits = wbits
        self._d = zlib.decompressobj(wbits)
        self._started = False

    def write(self, data: bytes) -> None:
        while data:
            self._started = True
            try:
                out = self._d.decompress(data, self.piece)
                self._out(out)
                while self._d.unconsumed_tail:
                    out = self._d.decompress(self._d.unconsumed_tail, self.piece)
                    self._out(out)
            except zlib.error as e:
                raise CorruptInput(self.name, str(e).split(":")[-1].strip()) from None
            if self._d.eof and self._d.unused_data:
                rest = self._d.unused_data
                if self.wbits == 31 and rest.lstrip(b"\0")[:2] == b"\x1f\x8b":  # next gzip member
                    self._d = zlib.decompressobj(self.wbits)
                    data = rest.lstrip(b"\0")
                    continue
                if rest.strip(b"\0"):
                    raise CorruptInput(self.name, "trailing garbage after the end of the stream")
            data = b""

    def _flush(self) -> None:
        try:
            self._out(self._d.flush())
        except zlib.error as e:
            raise CorruptInput(self.name, str(e)) from None
        self.truncated = self._started and not self._d.eof


class DeflateDecoder(GzipDecoder):
    """HTTP 'deflate' is meant to be zlib-wrapped; many servers send raw deflate. Accept both."""

    name = "deflate"

    def __init__(self, sink: Sink, budget: Budget):
        super().__init__(sink, budget, wbits=15)
        self._head = b""

    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            if len(self._head) < 2:
                return
            b0, b1 = self._head[0], self._head[1]
            zlib_wrapped = (b0 & 0x0F) == 8 and ((b0 << 8) | b1) % 31 == 0
            self.wbits = 15 if zlib_wrapped else -15
            self._d = zlib.decompressobj(self.wbits)
            data, self._head = self._head, None
        super().write(data)

    def _flush(self) -> None:
        if self._head:
            head, self._head = self._head, None
            self._d = zlib.decompressobj(-15)
            super().write(head)
        self._head = None
        super()._flush()


class BrotliDecoder(_Stage):
    name = "br"

    def __init__(self, sink: Sink, budget: Budget):
        super().__init__(sink, budget)
        self._d = brotli.Decompressor()
        self._started = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._started = True
        try:
            if self._d.is_finished():
                raise CorruptInput(self.name, "trailing data after the end of the stream")
            self._out(self._d.process(data, output_buffer_limit=self.piece))
            while not self._d.can_accept_more_data():
                self._out(self._d.process(b"", output_buffer_limit=self.piece))
        except brotli.error as e:
            raise CorruptInput(self.name, str(e) or "invalid brotli stream") from None

    def _flush(self) -> None:
        self.truncated = self._started and not self._d.is_finished()


class _PieceWriter:
    """zstandard pushes decoded pieces here; the budget can stop it mid-frame."""

    def __init__(self, stage: "ZstdDecoder"):
        self.stage = stage

    def write(self, data: bytes) -> int:
        self.stage._out(bytes(data))
        return len(data)


class ZstdDecoder(_Stage):
    name = "zstd"

    def __init__(self, sink: Sink, budget: Budget):
        super().__init__(sink, budget)
        # max_window_size bounds the decoder's own memory whatever the frame header claims
        self._w = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_writer(
            _PieceWriter(self), write_size=self.piece)

    def write(self, data: bytes) -> None:
        try:
            self._w.write(data)
        except zstandard.ZstdError as e:
            raise CorruptInput(self.name, str(e).replace("zstd decompress error: ", "")) from None

    def _flush(self) -> None:
        try:
            self._w.flush()
        except zstandard.ZstdError as e:
            raise CorruptInput(self.name, str(e)) from None


class _StdlibStreamDecoder(_Stage):
    """xz / bzip2 through the standard library's incremental decompressors, ``max_length`` at a
    time so that one small input chunk cannot expand past a piece before the budget sees it.
    Concatenated streams (``xz`` multi-stream, ``pbzip2``) are read one after another."""

    name = "stream"
    magic = b""

    def __init__(self, sink: Sink, budget: Budget):
        super().__init__(sink, budget)
        self._d = self._new()
        self._started = False
        self._ended = False          # a stream ended and nothing has started since

    def _new(self):   # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        while data:
            if self._ended:
                rest = data.lstrip(b"\0")           # xz stream padding is NUL bytes
                if not rest:
                    return
                if not rest.startswith(self.magic[:3]):
                    raise CorruptInput(self.name, "trailing garbage after the end of the stream")
                self._d, self._ended, data = self._new(), False, rest
            self._started = True
            try:
                out = self._d.decompress(data, self.piece)
                self._out(out)
                while not self._d.eof and not self._d.needs_input:
                    self._out(self._d.decompress(b"", self.piece))
            except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
                raise CorruptInput(self.name, str(e) or type(e).__name__) from None
            data = b""
            if self._d.eof:
                self._ended = True
                data = self._d.unused_data

    def _flush(self) -> None:
        self.truncated = self._started and not self._ended


class XzDecoder(_StdlibStreamDecoder):
    """xz (.xz files); the decoder's own memory is capped (a header may ask for a huge dictionary)."""

    name = "xz"
    magic = b"\xfd7zXZ\x00"

    def _new(self):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=256 << 20)


class Bzip2Decoder(_StdlibStreamDecoder):
    name = "bzip2"
    magic = b"BZh"

    def _new(self):
        return bz2.BZ2Decompressor()


DECODERS = {"gzip": GzipDecoder, "x-gzip": GzipDecoder, "deflate": DeflateDecoder,
            "br": BrotliDecoder, "zstd": ZstdDecoder}


def parse_content_encoding(header: str | None) -> list[str]:
    """Codings in the order they were applied; 'identity' dropped. Unknown ones raise."""
    if not header:
        return []
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    for c in codings:
        if c not in DECODERS:
            raise CorruptInput("content-encoding", f"unsupported coding {c!r}")
    return codings


def chain(codings: list[str], sink: Sink, budget: Budget) -> tuple[Sink, list[_Stage]]:
    """Build decoders so that the last-applied coding is undone first."""
    stages: list[_Stage] = []
    budget.check_depth(len(codings))
    for c in codings:                      # first applied = innermost = closest to the sink
        sink = DECODERS[c](sink, budget)
        stages.append(sink)                # type: ignore[arg-type]
    return sink, stages
