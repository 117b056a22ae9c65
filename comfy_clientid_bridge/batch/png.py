"""A PNG encoder for the save loop: Up-filtered rows, deflated on several cores at once."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
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

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="clientid_bridge_png")
        return _pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def filtered_rows(pixels: npt.NDArray[np.uint8]) -> bytes:
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
    return rows.tobytes()


def _deflate_part(data: memoryview, level: int, last: bool) -> bytes:
    # Raw deflate; a sync flush ends each part on a byte boundary so parts concatenate.
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


def parallel_zlib(data: bytes, level: int) -> bytes:
    """A zlib stream of `data`, its parts deflated on several threads (zlib frees the GIL).

    As pigz does: each part loses only the dictionary of the part before it.
    """
    parts = _workers() if len(data) >= PARALLEL_MIN_BYTES else 1
    if parts == 1:
        return zlib.compress(data, level)
    view = memoryview(data)
    bounds = [len(data) * number // parts for number in range(parts + 1)]
    jobs = [
        _executor().submit(_deflate_part, view[start:end], level, end == len(data))
        for start, end in zip(bounds, bounds[1:], strict=False)
    ]
    header = ZLIB_HEADERS[min(3, (level + 2) // 3) if level > 1 else 0]
    body = b"".join(job.result() for job in jobs)
    return header + body + struct.pack(">I", zlib.adler32(data))


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
    idat = parallel_zlib(filtered_rows(np.ascontiguousarray(pixels)), compress_level)
    chunks += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(chunks)
