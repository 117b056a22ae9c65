"""Tests for loading batch inputs like ComfyUI's LoadImage and encoding results."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from comfy_clientid_bridge.batch.images import (
    UnreadableImage,
    encode_image,
    load_image,
    to_uint8,
)
from comfy_clientid_bridge.batch.listing import DEFAULT_PATTERNS, list_images

RED, BLUE = (255, 0, 0), (0, 0, 255)
BATCH_MODULES = ("images", "listing", "naming", "progress", "state")


def noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def solid(mode: str, color: float | tuple[int, ...], **options: Any) -> Callable[[Path], Path]:
    def writer(path: Path) -> Path:
        return save(Image.new(mode, (8, 8), color), path, **options)

    return writer


def write(data: bytes) -> Callable[[Path], Path]:
    def writer(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return writer


def make_folder(path: Path) -> Path:
    path.mkdir()
    return path


def rotated_jpeg(path: Path) -> Path:
    """40 wide, 20 high, red top-left corner, EXIF orientation 6 (turn 90 degrees clockwise)."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(Image.new("RGB", (10, 10), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(image, path, exif=exif, quality=95)


def palette_png(path: Path) -> Path:
    image = Image.new("P", (4, 2), 1)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.putpixel((0, 0), 0)
    return save(image, path, transparency=0)


def animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    return save(frames[0], path, save_all=True, append_images=frames[1:], duration=100)


def sixteen_bit_png(path: Path) -> Path:
    return save(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)), path)


def thirty_two_bit_tiff(path: Path) -> Path:
    return save(Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32)), path)


@pytest.mark.parametrize(
    ("name", "make", "expected_rgb", "expected_mask"),
    [
        ("rgb.png", solid("RGB", (255, 128, 0)), (1, 128 / 255, 0), 0),
        ("RGBA.PNG", solid("RGBA", (0, 0, 255, 51)), (0, 0, 1), 0.8),
        ("la.png", solid("LA", (102, 255)), (0.4, 0.4, 0.4), 0),
        ("gray.png", solid("L", 51), (0.2, 0.2, 0.2), 0),
        ("bilevel.png", solid("1", 1), (1, 1, 1), 0),
        ("cmyk.jpg", solid("CMYK", (255, 0, 0, 0), quality=100), (0, 1, 1), 0),
        ("anim.gif", animated_gif, (1, 0, 0), 0),
        ("bmp.bmp", solid("RGB", BLUE), (0, 0, 1), 0),
        ("webp.webp", solid("RGB", BLUE, lossless=True), (0, 0, 1), 0),
    ],
    ids=["rgb", "rgba", "la", "grayscale", "bilevel", "cmyk-jpeg", "animated-gif", "bmp", "webp"],
)
def test_load_image_modes(
    tmp_path: Path,
    name: str,
    make: Callable[[Path], Path],
    expected_rgb: tuple[float, float, float],
    expected_mask: float,
) -> None:
    rgb, mask = load_image(make(tmp_path / name))
    assert rgb.dtype == np.float32 and mask.dtype == np.float32
    assert rgb.shape[:2] == mask.shape and rgb.shape[2] == 3
    np.testing.assert_allclose(rgb[1, 1], expected_rgb, atol=0.02)
    np.testing.assert_allclose(mask, expected_mask, atol=0.01)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_floats_are_loadimages_bit_for_bit(tmp_path: Path, mode: str) -> None:
    """ComfyUI's LoadImage: np.array(image.convert("RGB")).astype(np.float32) / 255.0."""
    rng = np.random.default_rng(2)
    channels = len(mode)
    pixels = rng.integers(0, 256, (16, 256, channels), dtype=np.uint8).squeeze(
        -1 if channels == 1 else ()
    )
    pixels.reshape(-1, channels)[:256, 0] = np.arange(256)  # every byte value
    path = save(Image.fromarray(pixels, mode), tmp_path / "all.png")
    rgb, mask = load_image(path)
    with Image.open(path) as image:
        expected = np.array(image.convert("RGB")).astype(np.float32) / 255.0
        alpha = np.array(image.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
    assert rgb.dtype == np.float32 and np.array_equal(rgb, expected)
    assert np.array_equal(mask, 1.0 - alpha if mode == "RGBA" else np.zeros_like(mask))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_to_uint8_is_save_images_conversion(dtype: type) -> None:
    """ComfyUI's SaveImage: np.clip(255. * image, 0, 255).astype(np.uint8), out of range too."""
    floats = np.random.default_rng(3).uniform(-0.5, 1.5, (2, 32, 48, 3)).astype(dtype)
    floats.reshape(-1)[:256] = np.arange(256) / 255  # every byte value, as loaded
    expected = np.clip(floats * 255.0, 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(floats), expected)


def test_a_loaded_image_saves_back_to_its_bytes(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    rgb, _ = load_image(save(Image.fromarray(pixels), tmp_path / "x.png"))
    assert np.array_equal(to_uint8(rgb), pixels)


def test_palette_transparency_becomes_the_mask(tmp_path: Path) -> None:
    rgb, mask = load_image(palette_png(tmp_path / "palette.png"))
    assert mask.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(rgb[0, 1], (1, 0, 0))


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("deep.png", sixteen_bit_png, [0, 32768 / 65535, 1]),
        ("deep.TIF", thirty_two_bit_tiff, [0, 1, 1]),
    ],
    ids=["16-bit-png", "32-bit-int-tiff-clipped"],
)
def test_load_high_bit_depth_uses_the_full_range(
    tmp_path: Path, name: str, make: Callable[[Path], Path], expected: list[float]
) -> None:
    path = make(tmp_path / name)
    with Image.open(path) as opened:
        assert opened.mode in {"I;16", "I"}  # the case under test, not an 8-bit file
    rgb, mask = load_image(path)
    np.testing.assert_allclose(rgb[0], np.repeat(np.array(expected)[:, None], 3, axis=1))
    assert mask.shape == (1, 3) and not mask.any()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rgb, mask = load_image(rotated_jpeg(tmp_path / "rotated.jpg"))
    assert rgb.shape == (40, 20, 3) and mask.shape == (40, 20)
    # Turned clockwise, the red top-left corner ends up top-right.
    np.testing.assert_allclose(rgb[2, 17], (1, 0, 0), atol=0.1)
    np.testing.assert_allclose(rgb[2, 2], (0, 0, 1), atol=0.1)


def test_broken_exif_keeps_the_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("bad EXIF IFD")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    rgb, _ = load_image(rotated_jpeg(tmp_path / "rotated.jpg"))
    assert rgb.shape == (20, 40, 3)
    assert "EXIF orientation" in caplog.text


def test_upright_images_are_not_copied_to_be_turned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def copying(image: Image.Image) -> Image.Image:
        raise AssertionError("exif_transpose called for an image without orientation")

    monkeypatch.setattr(ImageOps, "exif_transpose", copying)
    pixels = np.random.default_rng(5).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    rgb, _ = load_image(save(Image.fromarray(pixels), tmp_path / "plain.png"))
    assert np.array_equal(to_uint8(rgb), pixels)


BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "zero bytes.png": write(b""),
    "notes.png": write(b"this is not an image\n"),
    "-truncated.jpg": write(noise_jpeg()[:2000]),
    "header only.gif": write(b"GIF89a"),
    "ünï html.jpg": write(b"<html><body>404</body></html>"),
    "folder.png": make_folder,
}


@pytest.mark.parametrize("name", list(BAD_FILES), ids=list(BAD_FILES))
def test_unreadable_files_raise_unreadable_image(tmp_path: Path, name: str) -> None:
    path = BAD_FILES[name](tmp_path / name)
    with pytest.raises(UnreadableImage, match=f"cannot read image .*{name}") as caught:
        load_image(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == path and caught.value.reason


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="gone.png"):
        load_image(tmp_path / "gone.png")


def test_a_folder_of_bad_files(tmp_path: Path) -> None:
    for name, make in BAD_FILES.items():
        make(tmp_path / name)
    rotated_jpeg(tmp_path / "good.JPG")
    outcomes: dict[str, str] = {}
    for rel in list_images(tmp_path, DEFAULT_PATTERNS, False):
        try:
            load_image(tmp_path / rel)
            outcomes[rel] = "loaded"
        except UnreadableImage:
            outcomes[rel] = "unreadable"
    expected = {name: "unreadable" for name in BAD_FILES if name != "folder.png"}
    assert outcomes == {**expected, "good.JPG": "loaded"}


@pytest.mark.parametrize(
    ("size", "pillow_limit", "reason"),
    [
        ((40, 40), 1000, "decompression bomb"),
        ((100, 100), 1000, "decompression bomb"),
    ],
    ids=["over-pillow-limit-warns", "twice-pillow-limit-errors"],
)
def test_decompression_bombs_are_unreadable_not_warnings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    pillow_limit: int,
    reason: str,
) -> None:
    path = save(Image.new("RGB", size), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImage, match=reason):
            load_image(path)
    assert caught == []


def test_unreadable_image_pickles() -> None:
    error = UnreadableImage(Path("a b.png"), "truncated")
    restored = pickle.loads(pickle.dumps(error))
    assert str(restored) == "cannot read image a b.png: truncated"
    assert restored.path == Path("a b.png") and restored.reason == "truncated"


PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "text": '東京 "q"'}}}
WORKFLOW = {"nodes": [{"id": 3, "type": "KSampler"}], "extra": {"note": "ünï"}}
PIXELS = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_carries_prompt_and_workflow_like_save_image() -> None:
    image = decode(encode_image(PIXELS, "png", 90, 4, PROMPT, WORKFLOW))
    assert image.format == "PNG"
    assert image.info["prompt"] == json.dumps(PROMPT)
    assert image.info["workflow"] == json.dumps(WORKFLOW)
    assert json.loads(image.info["prompt"]) == PROMPT
    np.testing.assert_array_equal(np.asarray(image), PIXELS)


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [("jpeg", "JPEG"), ("JPG", "JPEG"), ("webp", "WEBP")],
    ids=["jpeg", "jpg-uppercase", "webp"],
)
def test_exif_carries_prompt_and_workflow(fmt: str, pil_format: str) -> None:
    image = decode(encode_image(PIXELS, fmt, 90, 4, PROMPT, WORKFLOW))
    exif = image.getexif()
    assert image.format == pil_format
    assert exif[0x010F] == "Prompt:" + json.dumps(PROMPT)
    assert exif[0x0110] == "Workflow:" + json.dumps(WORKFLOW)
    assert json.loads(exif[0x0110].split(":", 1)[1]) == WORKFLOW


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_no_metadata_when_none_is_given(fmt: str) -> None:
    image = decode(encode_image(PIXELS, fmt, 90, 4, None, None))
    assert "prompt" not in image.info and "workflow" not in image.info
    assert 0x010F not in image.getexif() and 0x0110 not in image.getexif()


def test_metadata_too_big_for_jpeg_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = {"nodes": ["x" * 1000] * 100}
    image = decode(encode_image(PIXELS, "jpeg", 90, 4, PROMPT, huge))
    assert 0x0110 not in image.getexif()
    assert "does not fit a JPEG" in caplog.text


def test_webp_takes_metadata_too_big_for_jpeg() -> None:
    huge = {"nodes": ["x" * 1000] * 100}
    image = decode(encode_image(PIXELS, "webp", 90, 4, PROMPT, huge))
    assert image.getexif()[0x0110] == "Workflow:" + json.dumps(huge)


def test_compress_level_and_quality_reach_the_encoder() -> None:
    smooth = np.zeros((64, 64, 3), dtype=np.uint8)
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = [len(encode_image(smooth, "png", 90, level, None, None)) for level in (0, 9)]
    jpeg = [len(encode_image(noisy, "jpeg", quality, 4, None, None)) for quality in (10, 95)]
    assert png[0] > png[1] and jpeg[0] < jpeg[1]


@pytest.mark.parametrize(
    ("pixels", "fmt", "quality", "compress_level", "message"),
    [
        (PIXELS, "gif", 90, 4, "format must be one of png, jpeg, jpg, webp; got 'gif'"),
        (PIXELS, "png", 0, 4, "quality must be in 1..100; got 0"),
        (PIXELS, "png", 101, 4, "quality must be in 1..100; got 101"),
        (PIXELS, "png", 90, 10, "compress_level must be in 0..9; got 10"),
        (PIXELS.astype(np.float32), "png", 90, 4, "expected an HxWx3 uint8 array; got float32"),
        (PIXELS[..., 0], "png", 90, 4, r"shape \(4, 6\)"),
        (np.zeros((4, 6, 4), np.uint8), "png", 90, 4, r"shape \(4, 6, 4\)"),
    ],
    ids=["format", "quality-low", "quality-high", "compress-level", "float", "2d", "rgba"],
)
def test_encode_image_rejects(
    pixels: np.ndarray[Any, Any], fmt: str, quality: int, compress_level: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_image(pixels, fmt, quality, compress_level, None, None)


def assert_imports_without(modules: str, absent: set[str]) -> None:
    """Imports `modules` in a fresh interpreter; fails naming any of `absent` it loaded."""
    check = (
        f"import sys, {modules}; "
        f"loaded = sorted({absent!r} & set(sys.modules)); "
        "sys.exit(', '.join(loaded) or None)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_batch_helpers_import_without_torch_or_comfyui() -> None:
    modules = ", ".join(f"comfy_clientid_bridge.batch.{name}" for name in BATCH_MODULES)
    assert_imports_without(modules, {"torch", "server", "comfy"})


@pytest.mark.parametrize(
    "module",
    ["comfy_clientid_bridge.__main__", "comfy_clientid_bridge.tools.flow"],
    ids=["command", "flowing-runner"],
)
def test_the_terminal_runner_imports_without_numpy_pillow_or_torch(module: str) -> None:
    """It is installed with aiohttp and tqdm only (pyproject's dependencies)."""
    assert_imports_without(module, {"numpy", "PIL", "torch", "server"})
