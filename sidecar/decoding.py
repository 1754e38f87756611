"""Content-Encoding decoding with a bound on the decoded size and on the expansion ratio.

A 9 MB gzip body can hold 4 GiB of zeros; decoding it whole (mitmproxy's
`get_content`) is how a client fills the proxy's memory. Here every decoder is asked
for at most the bytes still allowed (zlib's and zstd's `max_length`, brotli's
`output_buffer_limit`), so memory stays at the bound whatever the input says, and the
body is refused with 413 as soon as it is known to exceed

- `limit` decoded bytes (the route's `max_buffered_body`), or
- `max_ratio` x its encoded size, once the output is past `RATIO_FLOOR` bytes (small
  bodies may compress very well; a bomb is refused before it reaches `limit`).

Sans-IO: bytes in, bytes out. Codings stack (`Content-Encoding: gzip, br` was gzipped
first), and each layer is bounded. Unknown codings are refused, never passed through
undecoded to a rule that needs the plaintext.
"""

from __future__ import annotations

import zlib

from sidecar.errors import BadBody, TooLarge

MAX_RATIO = 100
"""Decoded/encoded size above which a body is taken for a compression bomb."""
RATIO_FLOOR = 1 << 20
"""Outputs up to this size are not checked against the ratio."""
_STEP = 1 << 16  # input slice fed to a decoder per call


def decode(data: bytes, content_encoding: str, limit: int, max_ratio: int = MAX_RATIO) -> bytes:
    """The body with every Content-Encoding layer removed, within the bounds."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    encoded = len(data)
    for coding in reversed(codings):
        if coding == "identity":
            continue
        cap = min(limit, max(RATIO_FLOOR, max_ratio * encoded))
        data = _decoder(coding)(data, cap)
        if len(data) > limit:
            raise TooLarge(f"the body decodes to more than the {limit}-byte limit for buffered bodies")
        if len(data) > cap:
            raise TooLarge(f"the body expands more than {max_ratio}x when decoded ({coding}): refused as a compression bomb")
    return data


def _decoder(coding: str):
    try:
        return _DECODERS[coding]
    except KeyError:
        raise BadBody(f"the Content-Encoding {coding!r} is not supported on this route") from None


def _zlib(wbits: int):
    def run(data: bytes, cap: int) -> bytes:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, cap + 1)  # never more than one byte past the cap
        except zlib.error:
            raise BadBody("the body's Content-Encoding cannot be decoded") from None
        if len(out) <= cap and (not d.eof or d.unused_data):
            raise BadBody("the body's Content-Encoding cannot be decoded (cut short or trailing bytes)")
        return out

    return run


def _deflate(data: bytes, cap: int) -> bytes:
    """`deflate` is zlib-wrapped by the RFC; some servers send raw deflate: accept both."""
    try:
        return _zlib(zlib.MAX_WBITS)(data, cap)
    except BadBody:
        return _zlib(-zlib.MAX_WBITS)(data, cap)


def _brotli(data: bytes, cap: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = bytearray()
    try:
        for at in range(0, max(len(data), 1), _STEP):
            out += d.process(data[at : at + _STEP], output_buffer_limit=cap + 1 - len(out))
            while len(out) <= cap and not d.can_accept_more_data():
                out += d.process(b"", output_buffer_limit=cap + 1 - len(out))
            if len(out) > cap:
                return bytes(out)
    except brotli.error:
        raise BadBody("the body's Content-Encoding cannot be decoded") from None
    if not d.is_finished():
        raise BadBody("the body's Content-Encoding cannot be decoded (cut short)")
    return bytes(out)


def _zstd(data: bytes, cap: int) -> bytes:
    try:
        from compression import zstd
    except ImportError:  # Python < 3.14
        from backports import zstd

    d = zstd.ZstdDecompressor()
    try:
        out = d.decompress(data, cap + 1)
        while len(out) <= cap and not d.needs_input and not d.eof:
            out += d.decompress(b"", cap + 1 - len(out))
    except zstd.ZstdError:
        raise BadBody("the body's Content-Encoding cannot be decoded") from None
    if len(out) <= cap and (not d.eof or d.unused_data):
        raise BadBody("the body's Content-Encoding cannot be decoded (cut short or trailing bytes)")
    return out


_DECODERS = {
    "gzip": _zlib(32 + zlib.MAX_WBITS),  # gzip or zlib header, detected (as mitmproxy does)
    "x-gzip": _zlib(32 + zlib.MAX_WBITS),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
