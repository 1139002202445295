"""An image's declared size from its header, read before anything is decoded.

A small file can declare an enormous image (a 875 KB PNG of 30000 x 30000 pixels decodes to 5 GB), so
the manifest's image reader compares the header's width x height with its ``max_pixels`` first.
``image_size(path)`` knows PNG (IHDR), GIF (the logical screen), WebP (VP8, VP8L, VP8X) and JPEG
(the first start-of-frame segment); ``None`` for a format it does not know or a header it cannot
find (the decoder then says what is wrong).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["image_size"]

#: JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC, which share the range).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(path: str | Path | bytes) -> tuple[int, int] | None:
    """``(width, height)`` as the file's header (or an encoded image's bytes) declares them, or None."""
    with (io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")) as f:
        head = f.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(head)
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            return _jpeg(f)
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg(f: BinaryIO) -> tuple[int, int] | None:
    """Walk the segments (``FF xx`` + a big-endian length) to the first start of frame."""
    while True:
        byte = f.read(1)
        if byte != b"\xff":  # not at a marker: not a stream this walk can read
            return None
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            continue
        size = f.read(2)
        if len(size) < 2:
            return None
        length = struct.unpack(">H", size)[0]
        if marker in _SOF:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            h, w = struct.unpack(">HH", frame[1:5])
            return w, h
        if marker in (0xD9, 0xDA) or length < 2:  # end of image, start of scan: no frame header before it
            return None
        f.seek(length - 2, 1)
