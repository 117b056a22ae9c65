"""Our PNG encoder: what Pillow reads back is what went in, with ComfyUI's text chunks."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from comfy_clientid_bridge.batch import png


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("channels", [1, 3, 4], ids=["grey", "rgb", "rgba"])
@pytest.mark.parametrize("level", [0, 1, 4, 6, 9])
def test_round_trip(channels: int, level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    image = decode(png.encode_png(pixels, level, {}))
    assert np.array_equal(np.asarray(image).reshape(37, 53, channels), pixels)


def test_parallel_stream_is_one_valid_zlib_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(0).integers(0, 8, 3_000_000, dtype=np.uint8).tobytes()
    monkeypatch.setattr(png, "_workers", lambda: 3)
    assert zlib.decompress(png.parallel_zlib(data, 4)) == data


def test_large_image_is_deflated_in_parts_and_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "_workers", lambda: 2)
    calls: list[bool] = []
    original = png._deflate_part
    monkeypatch.setattr(png, "_deflate_part", lambda *a: calls.append(a[2]) or original(*a))
    y, x = np.mgrid[0:700, 0:700]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    assert np.array_equal(np.asarray(decode(png.encode_png(pixels, 4, {}))), pixels)
    assert sorted(calls) == [False, True]


def test_text_chunks_as_comfyui_writes_them() -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    image = decode(png.encode_png(pixels, 4, {"prompt": '{"1": {}}', "workflow": '{"n": []}'}))
    assert image.info["prompt"] == '{"1": {}}' and image.info["workflow"] == '{"n": []}'


@pytest.mark.parametrize(
    ("pixels", "level"),
    [
        (np.zeros((2, 2, 3), dtype=np.float32), 4),
        (np.zeros((2, 2, 2), dtype=np.uint8), 4),
        (np.zeros((2, 2), dtype=np.uint8), 4),
        (np.zeros((2, 2, 3), dtype=np.uint8), 10),
    ],
    ids=["float", "two-channels", "2d", "level-10"],
)
def test_rejects_what_it_cannot_encode(pixels: np.ndarray, level: int) -> None:
    with pytest.raises(ValueError, match="expected|compress_level"):
        png.encode_png(pixels, level, {})
