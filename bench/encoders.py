"""The saver's encoders alone: our PNG against today's fallback and Pillow; JPEG and WebP settings.

Run: python bench/encoders.py   (no ComfyUI needed; install `isal` for the fast path)
1. Level table: for each ComfyUI compress_level 0-9, on several kinds of 1024x1024 image,
   the size and time of our PNG with ISA-L available against the same encoder without it
   (today's Up filter + zlib on all cores), which library deflated, and the size ratio.
   The rule: no level gives a file more than 2% larger than without ISA-L.
2. Encoder alone at level 4 on the photo-like image: ours against Pillow's PNG encoder
   (adaptive filters, zlib, one core), the same tEXt chunks, alternating, median of ROUNDS.
   Target <= 0.1.
3. JPEG and WebP: our encode_image against Pillow's defaults and the faster settings that
   Pillow offers, size and time, alternating.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.batch import png  # noqa: E402
from comfy_clientid_bridge.batch.images import encode_image  # noqa: E402

SIZE, ROUNDS = 1024, 7
Pixels = npt.NDArray[np.uint8]
PROMPT = {str(n): {"class_type": "Node", "inputs": {"value": n}} for n in range(20)}
WORKFLOW = {"nodes": [{"id": n, "type": "Node", "pos": [n, n]} for n in range(20)]}


def photo_like(seed: int, size: int = SIZE, noise: float = 6) -> Pixels:
    """Smooth gradients and sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = [
        128 + 100 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2)) + phase)
        for phase in rng.uniform(0, 2 * np.pi, 3)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, noise, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def through_jpeg(pixels: Pixels, quality: int = 90) -> Pixels:
    """What the loader hands the saver when the inputs are JPEGs (as in batch_throughput)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


def make_jpegs(folder: Path, count: int) -> None:
    """The batch benchmarks' inputs: photo-like JPEGs at quality 90."""
    folder.mkdir(parents=True)
    for number in range(count):
        Image.fromarray(photo_like(number)).save(folder / f"photo{number:02}.jpg", quality=90)


def flat_graphic(seed: int, size: int = SIZE) -> Pixels:
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 240, dtype=np.uint8)
    for _ in range(40):
        left, top = rng.integers(0, size - 100, 2)
        width, height = rng.integers(20, 300, 2)
        pixels[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return pixels


KINDS: dict[str, Callable[[], Pixels]] = {
    "photo from JPEG (the throughput bench's inputs)": lambda: through_jpeg(photo_like(0)),
    "smooth render from JPEG": lambda: through_jpeg(photo_like(2, noise=2)),
    "noisy photo, never a JPEG": lambda: photo_like(1, noise=10),
    "flat graphic": lambda: flat_graphic(3),
}


def timed(work: Callable[[], bytes]) -> tuple[float, bytes]:
    start = time.perf_counter()
    data = work()
    return (time.perf_counter() - start) * 1000, data


def without_isal(work: Callable[[], Any]) -> Any:
    saved, png.isal_zlib = png.isal_zlib, None
    try:
        return work()
    finally:
        png.isal_zlib = saved


def library_at(pixels: Pixels, level: int) -> str:
    rows = png.filtered_rows(pixels)
    return png.deflater(rows, level)[0].__name__.rpartition(".")[2]


def level_table(name: str, pixels: Pixels) -> list[float]:
    print(f"\n{name}: {pixels.nbytes / 1e6:.1f} MB of pixels")
    print("level | without isal: MB    ms | with isal: MB    ms  library   | size ratio")
    ratios = []
    for level in range(10):
        encode = partial(png.encode_png, pixels, level, {})
        old_ms, old = without_isal(partial(timed, encode))
        new_ms, new = timed(encode)
        ratios.append(len(new) / len(old))
        print(
            f"{level:5} | {len(old) / 1e6:15.3f} {old_ms:5.0f} | {len(new) / 1e6:12.3f} "
            f"{new_ms:5.0f}  {library_at(pixels, level):9} | {ratios[-1]:.3f}"
        )
    return ratios


def pillow_png(pixels: Pixels, level: int) -> bytes:
    info = PngInfo()
    info.add_text("prompt", json.dumps(PROMPT))
    info.add_text("workflow", json.dumps(WORKFLOW))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=level, pnginfo=info)
    return buffer.getvalue()


def side_by_side(contenders: dict[str, Callable[[], bytes]]) -> dict[str, tuple[float, int]]:
    """Median ms and size of each, run alternating ROUNDS times after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    sizes: dict[str, int] = {}
    for work in contenders.values():
        work()
    for _ in range(ROUNDS):
        for name, work in contenders.items():
            elapsed, data = timed(work)
            times[name].append(elapsed)
            sizes[name] = len(data)
    return {name: (statistics.median(times[name]), sizes[name]) for name in contenders}


def show(results: dict[str, tuple[float, int]], baseline: str) -> None:
    base_ms, base_size = results[baseline]
    for name, (ms, size) in results.items():
        print(
            f"  {name:44} {ms:7.1f} ms {size / 1e6:6.3f} MB   "
            f"time {ms / base_ms:5.2f}  size {size / base_size:5.2f}"
        )


def encoder_alone(pixels: Pixels) -> float:
    print(f"\nencoder alone, level 4, the photo from JPEG, median of {ROUNDS} alternating")
    results = side_by_side(
        {
            "Pillow PNG (adaptive filters, zlib)": lambda: pillow_png(pixels, 4),
            "ours without isal (Up, zlib on all cores)": lambda: without_isal(
                lambda: encode_image(pixels, "png", 95, 4, PROMPT, WORKFLOW)
            ),
            "ours": lambda: encode_image(pixels, "png", 95, 4, PROMPT, WORKFLOW),
        }
    )
    show(results, "Pillow PNG (adaptive filters, zlib)")
    ratio = results["ours"][0] / results["Pillow PNG (adaptive filters, zlib)"][0]
    print(f"  ours / Pillow: {ratio:.3f} (target <= 0.1)")
    return ratio


def pillow(pixels: Pixels, fmt: str, **options: Any) -> Callable[[], bytes]:
    def work() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **options)
        return buffer.getvalue()

    return work


def lossy(pixels: Pixels) -> None:
    print(f"\nJPEG and WebP, the photo from JPEG, median of {ROUNDS} alternating")
    print(" JPEG (Pillow's default quality is 75; the saver's default 95):")
    show(
        side_by_side(
            {
                "Pillow default (q75)": pillow(pixels, "JPEG"),
                "Pillow q95": pillow(pixels, "JPEG", quality=95),
                "Pillow q95 optimize": pillow(pixels, "JPEG", quality=95, optimize=True),
                "Pillow q95 4:4:4": pillow(pixels, "JPEG", quality=95, subsampling=0),
                "ours q95": lambda: encode_image(pixels, "jpeg", 95, 4, PROMPT, WORKFLOW),
            }
        ),
        "Pillow q95",
    )
    print(" WebP (Pillow's default: quality 80, method 4):")
    contenders = {"Pillow default (q80, method 4)": pillow(pixels, "WEBP")}
    for method in (0, 2, 4, 6):
        contenders[f"Pillow q95 method {method}"] = pillow(
            pixels, "WEBP", quality=95, method=method
        )
    contenders["ours q95"] = lambda: encode_image(pixels, "webp", 95, 4, PROMPT, WORKFLOW)
    show(side_by_side(contenders), "Pillow q95 method 4")


def main() -> None:
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"python {platform.python_version()} · isal "
        f"{'present' if png.isal_zlib is not None else 'MISSING: fallback only'} · "
        f"load {os.getloadavg()[0]:.1f}"
    )
    images = {name: make() for name, make in KINDS.items()}
    worst = {name: max(level_table(name, pixels)) for name, pixels in images.items()}
    for name, ratio in worst.items():
        print(f"largest size ratio, {name}: {ratio:.3f} (rule <= 1.02)")
    photo = images["photo from JPEG (the throughput bench's inputs)"]
    encoder_alone(photo)
    lossy(photo)


if __name__ == "__main__":
    main()
