"""Load images the way ComfyUI's LoadImage does and encode results with workflow metadata."""

from __future__ import annotations

import io
import json
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from .png import encode_png

logger = logging.getLogger(__name__)

FloatImage = npt.NDArray[np.float32]

# A format name as the saver is given it -> the format Pillow writes.
PILLOW_FORMAT_OF: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
EXIF_MAKE = 0x010F
EXIF_MODEL = 0x0110
EXIF_ORIENTATION = 0x0112
# A JPEG APP1 segment holds at most 65535 bytes including its 2-byte length field.
JPEG_MAX_EXIF_BYTES = 65533
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# What Pillow raises for broken files varies by plugin; these are the ones seen in practice.
_PILLOW_FAILURES = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class UnreadableImage(ValueError):
    """An input file that cannot be decoded as an image."""

    def __init__(self, path: Path, reason: str) -> None:
        # path and reason as args keep the exception picklable.
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read image {self.path}: {self.reason}"


def _upright(image: Image.Image, path: Path) -> Image.Image:
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            # exif_transpose's own test; it would return a copy: 4 ms at 1024x1024.
            return image
        return ImageOps.exif_transpose(image)
    except _PILLOW_FAILURES as error:
        # ComfyUI keeps such files too: broken EXIF should not cost the user the picture.
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, error)
        return image


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def _sixteen_bit_rgb(image: Image.Image) -> FloatImage:
    # Pillow's own conversion clips these modes to 8 bits; scale the full 16-bit range.
    gray = np.asarray(image, dtype=np.float32) / np.float32(65535)
    return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)


def _unit_floats(pixels: npt.NDArray[np.uint8]) -> FloatImage:
    # LoadImage's astype(float32) / 255.0, the same floats bit for bit, in one pass and one
    # array instead of two: at 1024x1024 that halves the loader's conversion time.
    floats: FloatImage = np.divide(pixels, np.float32(255), dtype=np.float32)
    return floats


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    return image if image.mode == mode else image.convert(mode)  # convert() always copies


def _to_arrays(image: Image.Image) -> tuple[FloatImage, FloatImage]:
    if image.mode in _SIXTEEN_BIT_MODES:
        rgb = _sixteen_bit_rgb(image)
        return rgb, np.zeros(rgb.shape[:2], dtype=np.float32)
    if not _has_alpha(image):
        rgb = _unit_floats(np.asarray(_in_mode(image, "RGB")))
        return rgb, np.zeros(rgb.shape[:2], dtype=np.float32)
    rgba = np.asarray(_in_mode(image, "RGBA"))
    # ComfyUI's LoadImage convention: the mask marks transparent pixels with 1.
    return _unit_floats(rgba[..., :3]), np.float32(1) - _unit_floats(rgba[..., 3])


def to_uint8(images: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """ComfyUI's SaveImage conversion of IMAGE floats, clip(255 * x, 0, 255) truncated to
    uint8, the same bytes with one temporary array instead of two."""
    scaled: npt.NDArray[np.floating[Any]] = np.multiply(images, 255.0)  # as `images * 255.0`
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


@dataclass(frozen=True, eq=False)
class OpenedImage:
    """A file opened by Pillow (its header read), not decoded yet."""

    path: Path
    image: Image.Image


def open_image(path: Path) -> OpenedImage:
    """Opens `path` and goes to its first frame; UnreadableImage for what Pillow refuses.

    Run on ComfyUI's executor thread, not the prefetch thread: catch_warnings swaps
    process-wide filters (not thread-safe before Python 3.14), and two threads in it at once
    could leave the other's filter in place for good. It is the only way to turn Pillow's
    bomb warning into a refusal without changing its limit."""
    try:
        with warnings.catch_warnings():
            # Over Pillow's limit it only warns (errors at twice the limit); both mean "refuse".
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            try:
                image.seek(0)  # animated files: the first frame
            except BaseException:
                image.close()
                raise
    except _PILLOW_FAILURES as error:
        raise UnreadableImage(path, str(error) or type(error).__name__) from error
    return OpenedImage(path, image)


def decode_opened(opened: OpenedImage) -> tuple[FloatImage, FloatImage]:
    """The pixels of an opened image as load_image gives them; the image is closed after.

    Safe on another thread than open_image's: it touches no process-wide state."""
    try:
        with opened.image as image:
            image.load()
            return _to_arrays(_upright(image, opened.path))
    except _PILLOW_FAILURES as error:
        raise UnreadableImage(opened.path, str(error) or type(error).__name__) from error


def close_opened(opened: OpenedImage) -> None:
    opened.image.close()


def load_image(path: Path) -> tuple[FloatImage, FloatImage]:
    """(RGB float32 HxWx3 in [0, 1], mask float32 HxW) with EXIF orientation applied.

    The mask is 1 - alpha as in ComfyUI's LoadImage, zeros when the file has no alpha.
    Any file Pillow cannot decode, or one over Pillow's size limit, raises UnreadableImage.
    """
    return decode_opened(open_image(path))


def _check_pixels(rgb_uint8: npt.NDArray[Any]) -> None:
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 uint8 array; got {rgb_uint8.dtype} of shape {rgb_uint8.shape}"
        )


def _check_settings(fmt: str, quality: int, compress_level: int) -> str:
    pil_format = PILLOW_FORMAT_OF.get(fmt.lower())
    if pil_format is None:
        raise ValueError(f"format must be one of {', '.join(PILLOW_FORMAT_OF)}; got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100; got {quality}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9; got {compress_level}")
    return pil_format


def _png_text(prompt: dict[str, Any] | None, workflow: dict[str, Any] | None) -> dict[str, str]:
    named = {"prompt": prompt, "workflow": workflow}
    return {key: json.dumps(value) for key, value in named.items() if value is not None}


def _exif(prompt: dict[str, Any] | None, workflow: dict[str, Any] | None) -> Image.Exif:
    # "Name:json" in Make/Model: the ComfyUI frontend reads any "key:value" string of the
    # WebP EXIF and accepts both "Prompt"/"prompt" and "Workflow"/"workflow" as keys.
    exif = Image.Exif()
    if prompt is not None:
        exif[EXIF_MAKE] = "Prompt:" + json.dumps(prompt)
    if workflow is not None:
        exif[EXIF_MODEL] = "Workflow:" + json.dumps(workflow)
    return exif


def _jpeg_exif(exif: Image.Exif) -> bytes:
    data = exif.tobytes()
    if len(data) <= JPEG_MAX_EXIF_BYTES:
        return data
    logger.warning("metadata of %d bytes does not fit a JPEG; saving it without", len(data))
    return Image.Exif().tobytes()


def encode_image(
    rgb_uint8: npt.NDArray[Any],
    fmt: str,
    quality: int,
    compress_level: int,
    prompt: dict[str, Any] | None,
    workflow: dict[str, Any] | None,
) -> bytes:
    """The image encoded as PNG, JPEG or WebP with prompt and workflow embedded."""
    _check_pixels(rgb_uint8)
    pil_format = _check_settings(fmt, quality, compress_level)
    if pil_format == "PNG":
        # Same tEXt chunks as ComfyUI's SaveImage, so the file drags back into ComfyUI.
        return encode_png(rgb_uint8, compress_level, _png_text(prompt, workflow))
    image = Image.fromarray(rgb_uint8)
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        exif = _jpeg_exif(_exif(prompt, workflow))
        image.save(buffer, "JPEG", quality=quality, exif=exif)
    else:
        image.save(buffer, "WEBP", quality=quality, exif=_exif(prompt, workflow).tobytes())
    return buffer.getvalue()
