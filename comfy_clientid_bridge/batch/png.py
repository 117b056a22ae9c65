"""A PNG encoder for the save loop: Up-filtered rows, deflated by ISA-L when it is installed."""

from __future__ import annotations

import importlib
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)
UP_FILTER = 2
# zlib headers by FLEVEL (0: levels 0-1, 1: 2-5, 2: 6, 3: 7-9); decoders ignore FLEVEL.
ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
# Below this many bytes one thread is faster than handing work around.
PARALLEL_MIN_BYTES = 1 << 20
# ISA-L's best level (of 0-3): as fast as its level 1 on photos, and the smallest.
ISAL_LEVEL = 3
# compress_level -> the largest ISA-L/zlib size ratio, on a sample of the image's rows, at
# which ISA-L deflates the image; above it zlib does, as before. The rule: ISA-L never makes a
# file more than 2% larger than zlib at the user's level. How far the sample's ratio is from
# the whole image's depends on the level and the size (bench/encoders.py, photo-like images at
# 512 and 1024 px): within -2%..+0.5% at 1, 2 and 4, up to +2% at 3 and 5, up to +2.4% at
# 6-9, hence the bounds. On noisy photos ISA-L's file is as small as zlib's at 1, 2 and 4 (and
# smaller than 6-9 on raw sensor noise); on smooth images that came from JPEGs, or on flat
# graphics, zlib's lazy matching wins by 5-200%. Level 0 stays zlib's stored blocks.
ISAL_MAX_SAMPLE_RATIO = {
    1: 1.015,
    2: 1.015,
    3: 0.99,
    4: 1.015,
    5: 0.99,
    **dict.fromkeys(range(6, 10), 0.98),
}

# The sample: stripes of the deflate window's size spread over the image (smaller ones
# flatter zlib less than the whole). Below the minimum zlib alone costs a few ms.
SAMPLE_STRIPES = 4
SAMPLE_STRIPE_BYTES = 32 << 10
SAMPLE_MIN_BYTES = 256 << 10

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _optional_isal() -> ModuleType | None:
    # isal (ISA-L's deflate, zlib's format, 8x faster) is optional: see README, Install.
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return None


isal_zlib = _optional_isal()


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="clientid_bridge_png")
        return _pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc32 = (isal_zlib or zlib).crc32  # ISA-L's: 1 ms less for a 1024x1024 IDAT
    checksum = crc32(data, crc32(kind))  # not of kind + data: the IDAT is megabytes
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", checksum)])


def filtered_rows(pixels: npt.NDArray[np.uint8]) -> memoryview:
    """Each row prefixed by filter type 2 (Up: the byte minus the one above, mod 256).

    Up costs one vectorised subtraction and compresses photos about as well as
    Pillow's per-row adaptive choice, which tries every filter on every row.
    """
    height = pixels.shape[0]
    flat = pixels.reshape(height, -1)
    rows = np.empty((height, flat.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = UP_FILTER
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps mod 256
    return rows.reshape(-1).data


def _raw_deflate_size(library: ModuleType, data: memoryview, level: int) -> int:
    compressor = library.compressobj(level, library.DEFLATED, -15)
    return len(compressor.compress(data)) + len(compressor.flush())


def _sample(data: memoryview) -> list[memoryview]:
    starts = [
        (len(data) - SAMPLE_STRIPE_BYTES) * number // (SAMPLE_STRIPES - 1)
        for number in range(SAMPLE_STRIPES)
    ]
    return [data[start : start + SAMPLE_STRIPE_BYTES] for start in starts]


def isal_keeps_size(isal: ModuleType, data: memoryview, level: int) -> bool:
    """Whether ISA-L's output for a sample of data is at most ISAL_MAX_SAMPLE_RATIO[level]
    of zlib's at `level`."""
    stripes = _sample(data)
    zlib_sizes = [_executor().submit(_raw_deflate_size, zlib, part, level) for part in stripes]
    isal_size = sum(_raw_deflate_size(isal, part, ISAL_LEVEL) for part in stripes)
    return isal_size <= ISAL_MAX_SAMPLE_RATIO[level] * sum(job.result() for job in zlib_sizes)


def deflater(data: memoryview, level: int) -> tuple[ModuleType, int]:
    """The library (isal_zlib or zlib, one interface) and its level for this data at a
    ComfyUI compress_level: ISA-L where it keeps the size zlib gives, zlib elsewhere.
    Level 0 stays zlib's stored blocks, as ComfyUI means it."""
    if isal_zlib is None or level == 0 or len(data) < SAMPLE_MIN_BYTES:
        return zlib, level
    return (isal_zlib, ISAL_LEVEL) if isal_keeps_size(isal_zlib, data, level) else (zlib, level)


def _deflate_part(data: memoryview, library: ModuleType, level: int, last: bool) -> bytes:
    # Raw deflate; a sync flush ends each part on a byte boundary so parts concatenate.
    compressor = library.compressobj(level, library.DEFLATED, -15)
    flush = library.Z_FINISH if last else library.Z_SYNC_FLUSH
    deflated: bytes = compressor.compress(data) + compressor.flush(flush)
    return deflated


def _adler32(data: memoryview) -> int:
    checksum: int = (isal_zlib or zlib).adler32(data)
    return checksum


def zlib_stream(data: bytes | memoryview, level: int) -> bytes:
    """A zlib stream of `data`, its parts deflated on several threads (both libraries free
    the GIL). As pigz does: each part loses only the dictionary of the part before it."""
    view = memoryview(data).cast("B")
    library, library_level = deflater(view, level)
    parts = _workers() if len(view) >= PARALLEL_MIN_BYTES else 1
    header = ZLIB_HEADERS[min(3, (level + 2) // 3) if level > 1 else 0]
    if parts == 1:
        body = [_deflate_part(view, library, library_level, True)]
        return b"".join([header, *body, struct.pack(">I", _adler32(view))])
    bounds = [len(view) * number // parts for number in range(parts + 1)]
    jobs = [
        _executor().submit(_deflate_part, view[start:end], library, library_level, end == len(view))
        for start, end in zip(bounds, bounds[1:], strict=False)
    ]
    checksum = struct.pack(">I", _adler32(view))  # while the parts deflate
    return b"".join([header, *(job.result() for job in jobs), checksum])


def encode_png(pixels: npt.NDArray[Any], compress_level: int, text: dict[str, str]) -> bytes:
    """An 8-bit PNG of an HxWxC uint8 array (C = 1, 3 or 4) with tEXt chunks."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in COLOR_TYPES:
        raise ValueError(f"expected HxWx1/3/4 uint8 pixels; got {pixels.dtype} {pixels.shape}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9; got {compress_level}")
    height, width, channels = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    chunks = [SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in text.items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    idat = zlib_stream(filtered_rows(np.ascontiguousarray(pixels)), compress_level)
    chunks += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(chunks)
