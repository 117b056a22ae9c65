"""Output file names for batch results, kept inside their folder and written atomically."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Container, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

logger = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("overwrite", "skip", "increment")
MAX_INCREMENT = 100_000

_DRIVE = re.compile(r"^[A-Za-z]:")
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,16}$")
# O_BINARY only exists (and only matters) on Windows.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def check_safe_relpath(rel: str | PurePath) -> PurePosixPath:
    """rel as a relative POSIX path that cannot leave its base folder, else ValueError.

    Backslashes count as separators so that a name made on Linux stays safe on Windows.
    """
    text = str(rel)
    if "\x00" in text:
        raise ValueError(f"NUL byte in path {text!r}")
    text = text.replace("\\", "/")
    if text.startswith("/"):
        raise ValueError(f"absolute path not allowed: {text!r}")
    if _DRIVE.match(text):
        raise ValueError(f"drive letter not allowed: {text[:2]!r} in {text!r}")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"'..' component not allowed in {text!r}")
    if not parts:
        raise ValueError(f"empty path name: {text!r}")
    return PurePosixPath(*parts)


def _check_affix(label: str, value: str) -> None:
    if "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{label} must not contain '/', '\\' or NUL; got {value!r}")


def _subfolder_path(subfolder: str) -> PurePosixPath:
    # An empty subfolder (or ".") means the output folder itself.
    if subfolder.strip() in ("", "."):
        return PurePosixPath()
    return check_safe_relpath(subfolder)


def output_relpath(
    source_rel: str, prefix: str, suffix: str, extension: str, subfolder: str
) -> PurePosixPath:
    """subfolder / the source's own folders / prefix + source stem + suffix + '.' + extension."""
    source = check_safe_relpath(source_rel)
    _check_affix("prefix", prefix)
    _check_affix("suffix", suffix)
    ext = extension.removeprefix(".")
    if not _EXTENSION.match(ext):
        raise ValueError(f"extension must be 1-16 letters or digits; got {extension!r}")
    name = f"{prefix}{source.stem}{suffix}.{ext}"
    return check_safe_relpath(_subfolder_path(subfolder) / source.parent / name)


def resolve_inside(base: Path, rel: str | PurePath) -> Path:
    """base / rel with symlinks resolved, refused when the result lies outside base."""
    root = base.resolve()
    target = (root / check_safe_relpath(rel)).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{str(rel)!r} resolves to {target}, outside {root}")
    return target


def _free(candidate: Path, reserved: Container[Path]) -> bool:
    # lexists: a dangling symlink is occupied too; we must not write through it.
    return candidate not in reserved and not os.path.lexists(candidate)


def _first_free(path: Path, reserved: Container[Path]) -> Path:
    if _free(path, reserved):
        return path
    for number in range(1, MAX_INCREMENT + 1):
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
        if _free(candidate, reserved):
            return candidate
    raise FileExistsError(f"no free name for {path} after {MAX_INCREMENT} attempts")


def choose_target(path: Path, policy: str, reserved: Container[Path] = frozenset()) -> Path | None:
    """Where to write path under policy, or None to skip.

    Only the candidate names are checked: listing a folder of 100k outputs per image is too
    slow. What is taken is the disk plus `reserved`: the files of earlier images still being
    saved in the background.
    """
    if policy == "overwrite":
        return path
    if policy == "skip":
        return path if _free(path, reserved) else None
    if policy == "increment":
        return _first_free(path, reserved)
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")


def _temp_path(path: Path) -> Path:
    # Starts with '.' so batch listings skip it; the name fragment helps to spot leftovers.
    return path.with_name(f".{path.name[:32]}.{secrets.token_hex(6)}.tmp")


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a directory; os.replace is as durable as it gets there.
    try:
        os.fsync(handle)
    except OSError as error:
        logger.debug("could not fsync folder %s: %s", directory, error)
    finally:
        os.close(handle)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces path only when the block ends without an exception."""
    temp = _temp_path(path)
    # os.open with 0o666 lets the umask decide permissions, as a plain open() would.
    descriptor = os.open(temp, _TEMP_FLAGS, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace path with data; readers see the old or the new content, never a part."""
    with atomic_writer(path) as handle:
        handle.write(data)
