"""Where the batch nodes read and write: folders resolved against ComfyUI's own."""

from __future__ import annotations

from pathlib import Path

from .. import internals


def resolve_input_folder(folder: str) -> Path:
    """Absolute, or relative to ComfyUI's input directory."""
    path = Path(folder.strip()).expanduser()
    return path if path.is_absolute() else internals.input_directory() / path


def output_base(output_folder: str) -> tuple[Path, bool]:
    """Where the saver writes, and whether that is ComfyUI's output folder (so /view shows it)."""
    if output_folder.strip():
        path = Path(output_folder.strip()).expanduser()
        if not path.is_absolute():
            raise ValueError(f"output_folder must be absolute (or empty); got {output_folder!r}")
        return path, False
    return internals.output_directory(), True
