"""Just enough of a PNG reader to hand a browser screenshot to zxing-cpp.

Chromium's screenshots are 8-bit RGB or RGBA, not interlaced; that is all
this reads (anything else is a clear error, not a wrong picture). No Pillow
or numpy: zlib and the five scanline filters of the PNG specification.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class Grey:
    """A grey-scale image with the array interface zxing-cpp reads."""

    def __init__(self, width: int, height: int, pixels: bytes) -> None:
        self.width = width
        self.height = height
        self.pixels = pixels
        self.__array_interface__ = {"shape": (height, width), "typestr": "|u1",
                                    "data": pixels, "version": 3}


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> list[bytearray]:
    stride = width * bpp
    rows: list[bytearray] = []
    previous = bytearray(stride)
    pos = 0
    for _ in range(height):
        kind = raw[pos]
        line = bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xFF
            elif kind != 0:
                raise ValueError(f"PNG: unknown filter type {kind}")
        rows.append(line)
        previous = line
    return rows


def read_grey(data: bytes) -> Grey:
    """Decode a PNG to 8-bit grey (alpha ignored: screenshots are opaque)."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(SIGNATURE)
    header: tuple[int, ...] = ()
    idat = bytearray()
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if not header:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _compression, _filter, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError(f"PNG: only 8-bit, non-interlaced images are read "
                         f"(depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = CHANNELS[colour]
    rows = _unfilter(zlib.decompress(bytes(idat)), width, height, bpp)
    grey = bytearray()
    for line in rows:
        if bpp >= 3:
            grey += bytes((line[i] * 299 + line[i + 1] * 587 + line[i + 2] * 114) // 1000
                          for i in range(0, len(line), bpp))
        else:
            grey += line[::bpp]
    return Grey(width, height, bytes(grey))
