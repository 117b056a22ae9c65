"""Our PNG encoder, with ISA-L and without: what Pillow reads back is what went in, with
ComfyUI's text chunks, and ISA-L never makes a file more than 2% larger than zlib did."""

from __future__ import annotations

import io
import math
import zlib
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from comfy_clientid_bridge.batch import png

Pixels = npt.NDArray[np.uint8]
SIZE = 512


def photo_like(seed: int, noise: float = 6) -> Pixels:
    """Smooth gradients and sensor-like noise (bench/encoders.py's generator, smaller)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    channels = [
        128 + 100 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2)) + phase)
        for phase in rng.uniform(0, 2 * np.pi, 3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, noise, (SIZE, SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def through_jpeg(pixels: Pixels) -> Pixels:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


def flat_graphic(seed: int) -> Pixels:
    rng = np.random.default_rng(seed)
    pixels = np.full((SIZE, SIZE, 3), 240, dtype=np.uint8)
    for _ in range(40):
        left, top = rng.integers(0, SIZE - 100, 2)
        width, height = rng.integers(20, 300, 2)
        pixels[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return pixels


PHOTO = through_jpeg(photo_like(0))


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def library(pixels: Pixels, level: int) -> str:
    """'isal' or 'zlib': which library deflates these pixels at this compress_level."""
    chosen = png.deflater(png.filtered_rows(pixels), level)[0]
    return "isal" if chosen is png.isal_zlib and chosen is not None else "zlib"


def without_isal(pixels: Pixels, level: int) -> bytes:
    saved, png.isal_zlib = png.isal_zlib, None
    try:
        return png.encode_png(pixels, level, {})
    finally:
        png.isal_zlib = saved


@pytest.fixture(params=["isal", "zlib-fallback"])
def deflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with ISA-L (installed by the test extra) and without it."""
    if request.param == "isal":
        assert png.isal_zlib is not None, "the test extra installs isal: pip install -e .[test]"
    else:
        monkeypatch.setattr(png, "isal_zlib", None)
    return str(request.param).partition("-")[0]


@pytest.mark.parametrize("channels", [1, 3, 4], ids=["grey", "rgb", "rgba"])
@pytest.mark.parametrize("level", [0, 1, 4, 6, 9])
def test_small_images_round_trip(deflate: str, channels: int, level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    image = decode(png.encode_png(pixels, level, {}))
    assert np.array_equal(np.asarray(image).reshape(37, 53, channels), pixels)


@pytest.mark.parametrize(
    "pixels",
    [PHOTO, PHOTO[..., :1], np.dstack([PHOTO, PHOTO[..., 1]])],
    ids=["rgb", "grey", "rgba"],
)
def test_photos_read_back_to_the_same_pixels(deflate: str, pixels: Pixels) -> None:
    assert library(pixels, 4) == deflate  # the path under test is the one taken
    image = decode(png.encode_png(pixels, 4, {}))
    assert np.array_equal(np.asarray(image).reshape(pixels.shape), pixels)


def test_text_chunks_as_comfyui_writes_them(deflate: str) -> None:
    text = {"prompt": '{"1": {}}', "workflow": '{"n": ["ünï"]}'.encode().decode("latin-1")}
    image = decode(png.encode_png(PHOTO, 4, text))
    assert image.format == "PNG" and image.info == {**image.info, **text}
    assert np.array_equal(np.asarray(image), PHOTO)


def test_level_zero_stores_without_compressing(deflate: str) -> None:
    data = png.encode_png(PHOTO, 0, {})
    idat = data[data.index(b"IDAT") + 4 :]
    assert idat[2] & 0b110 == 0  # BTYPE 00 of the first deflate block: stored
    assert len(data) > PHOTO.nbytes


@pytest.mark.parametrize("level", range(10))
def test_isal_keeps_todays_size_at_every_level_on_a_photo(level: int) -> None:
    ours, today = len(png.encode_png(PHOTO, level, {})), len(without_isal(PHOTO, level))
    assert ours <= 1.02 * today
    if level in (1, 2, 4):  # where ISA-L matches zlib on photos; ComfyUI's default is 4
        assert library(PHOTO, level) == "isal"


KINDS = {
    "smooth-from-jpeg": through_jpeg(photo_like(2, noise=2)),
    "flat-graphic": flat_graphic(3),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_zlib_deflates_images_where_isal_would_be_larger(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = KINDS[kind]
    assert library(pixels, 4) == "zlib"
    assert len(png.encode_png(pixels, 4, {})) <= 1.02 * len(without_isal(pixels, 4))
    monkeypatch.setitem(png.ISAL_MAX_SAMPLE_RATIO, 4, math.inf)  # no sample check
    assert library(pixels, 4) == "isal"
    assert len(png.encode_png(pixels, 4, {})) > 1.05 * len(without_isal(pixels, 4))


@pytest.mark.parametrize("name", ["isal_zlib", "zlib"])
def test_parts_make_one_valid_zlib_stream(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: ModuleType | None = zlib if name == "zlib" else png.isal_zlib
    assert chosen is not None
    data = np.random.default_rng(0).integers(0, 8, 3_000_000, dtype=np.uint8).tobytes()
    monkeypatch.setattr(png, "_workers", lambda: 3)
    monkeypatch.setattr(png, "deflater", lambda data, level: (chosen, 1))
    assert zlib.decompress(png.zlib_stream(data, 4)) == data


def test_large_image_is_deflated_in_parts_and_reads_back(
    deflate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(png, "_workers", lambda: 2)
    monkeypatch.setattr(png, "PARALLEL_MIN_BYTES", 1 << 16)
    calls: list[bool] = []
    original = png._deflate_part
    monkeypatch.setattr(png, "_deflate_part", lambda *a: calls.append(a[3]) or original(*a))
    pixels = through_jpeg(photo_like(4))
    assert library(pixels, 4) == deflate
    assert np.array_equal(np.asarray(decode(png.encode_png(pixels, 4, {}))), pixels)
    assert sorted(calls) == [False, True]


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
