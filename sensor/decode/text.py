"""Text that is not ASCII-compatible (UTF-16, UTF-32): recognised, then transcoded to UTF-8 as it streams.

The signatures are ASCII patterns: ``1\\x002\\x003\\x00`` (a UTF-16LE digit run) matches none of
them, so such text must be transcoded before the scanner sees it. It is recognised three ways,
in this order of trust:

1. the charset the response declares (``Content-Type: text/csv; charset=utf-16le``), when that
   charset is not ASCII-compatible (a body declared UTF-16 or UTF-32 whose head holds no zero byte
   at all is mislabelled ASCII-compatible text, a common server mistake, and is scanned as it is);
2. a byte-order mark followed by text (most high bytes zero);
3. without a BOM, the zero-byte pattern of UTF-16 text: in the sniffed head, nearly every byte at
   one parity is zero and few at the other (ASCII-range text in UTF-16LE is ``c\\0c\\0``; BE is
   ``\\0c\\0c``). Binary that happens to look like this is transcoded to harmless noise.
"""
from __future__ import annotations

import codecs

# ASCII-range characters that matter to the signatures: digits, letters, separators
_PROBE = "0123456789 azAZ@.-:,;\t\n"
MIN_WIDE_HEAD = 16          # bytes needed before the zero-byte pattern is trusted
WIDE_ZEROS = 0.6            # share of zero bytes at the high-byte parity
NARROW_ZEROS = 0.1          # most allowed at the other parity


def _ascii_compatible(codec: codecs.CodecInfo) -> bool:
    try:
        return _PROBE.encode(codec.name) == _PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def declared_charset(content_type: str | None) -> str | None:
    """The codec named by ``charset=`` when the text must be transcoded (UTF-16, UTF-32, EBCDIC…);
    None for ASCII-compatible or unknown charsets (scanned as they are)."""
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            value = value.strip().strip('"').strip("'")
            try:
                codec = codecs.lookup(value)
            except LookupError:
                return None
            return None if _ascii_compatible(codec) else codec.name
    return None


def sniff_wide_text(head: bytes) -> str | None:
    """The UTF-16 codec ``head`` is text in, or None. A BOM decides the byte order; without one, the
    zero-byte pattern does. A BOM before binary (most high bytes not zero) is not text."""
    if head.startswith(codecs.BOM_UTF16_LE):
        high = head[3::2]
    elif head.startswith(codecs.BOM_UTF16_BE):
        high = head[2::2]
    else:
        if len(head) < MIN_WIDE_HEAD:
            return None
        even, odd = head[0::2], head[1::2]
        if _zeros(odd) >= WIDE_ZEROS and _zeros(even) <= NARROW_ZEROS:
            return "utf-16-le"
        if _zeros(even) >= WIDE_ZEROS and _zeros(odd) <= NARROW_ZEROS:
            return "utf-16-be"
        return None
    return "utf-16" if len(high) > 0 and _zeros(high) >= WIDE_ZEROS else None


def _zeros(b: bytes) -> float:
    return b.count(0) / len(b) if b else 0.0


class Transcoder:
    """A stream of text in ``codec`` handed on as UTF-8, chunk by chunk (a character split across
    chunks is kept until the next one); undecodable bytes become U+FFFD, never an error."""

    def __init__(self, out, codec: str):
        self.out = out
        self.codec = codec
        self._dec = codecs.getincrementaldecoder(codec)(errors="replace")

    def write(self, data: bytes) -> None:
        text = self._dec.decode(data)
        if text:
            self.out.feed(text.encode("utf-8"))

    def close(self) -> None:
        text = self._dec.decode(b"", final=True)
        if text:
            self.out.feed(text.encode("utf-8"))
