"""Find, order and split the image files of a batch folder."""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

DEFAULT_PATTERNS: tuple[str, ...] = (
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.webp",
    "*.bmp",
    "*.tif",
    "*.tiff",
    "*.gif",
)
ORDERS: tuple[str, ...] = ("natural", "name", "modified", "shuffle")

_PATTERN_SEPARATORS = re.compile(r"[;,]")
_DIGIT_RUNS = re.compile(r"(\d+)")
_GLOB_TOKENS = re.compile(r"\*\*/|\*\*|\*|\?|\[!?\]?[^\]]*\]|[^*?\[]+|\[")
# '**/' spans any number of folders (none included); '*' and '?' stay inside one name.
_WILDCARDS = {"**/": "(?:[^/]*/)*", "**": ".*", "*": "[^/]*", "?": "[^/]"}

NaturalKey = tuple[tuple[str | int, ...], tuple[str | int, ...], str]
_DirId = tuple[int, int]
Item = TypeVar("Item")


def parse_patterns(text: str) -> tuple[str, ...]:
    """Globs separated by ';' or ','; nothing left after trimming means DEFAULT_PATTERNS."""
    parts = (part.strip() for part in _PATTERN_SEPARATORS.split(text))
    return tuple(part for part in parts if part) or DEFAULT_PATTERNS


def _translate_class(body: str) -> str:
    negated = body.startswith("!")
    # Escape everything but ranges: '[', '&&', '~~', '||' would read as regex set syntax.
    chars = body[1:] if negated else body
    escaped = "".join(char if char == "-" else re.escape(char) for char in chars)
    return "[" + ("^/" if negated else "") + escaped + "]"


def _translate_token(token: str) -> str:
    if token in _WILDCARDS:
        return _WILDCARDS[token]
    if token.startswith("[") and token.endswith("]") and len(token) > 2:
        return _translate_class(token[1:-1])
    return re.escape(token)


# Globs match case-insensitively, and '*' matches any character of a name, newlines too.
_GLOB_FLAGS = re.IGNORECASE | re.DOTALL


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A case-insensitive regex for one glob; '*' stays inside a path segment, '**' does not."""
    regex = "".join(_translate_token(token) for token in _GLOB_TOKENS.findall(pattern))
    try:
        return re.compile(regex, _GLOB_FLAGS)
    except re.error as error:
        raise ValueError(f"invalid file pattern {pattern!r}: {error}") from None


def _combined(regexes: Sequence[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One regex for several globs: a file is matched once, not once per pattern."""
    if not regexes:
        return None
    return re.compile("|".join(f"(?:{r.pattern})" for r in regexes), _GLOB_FLAGS)


def _matches(
    rel: str, by_path: re.Pattern[str] | None, by_name: re.Pattern[str] | None, recursive: bool
) -> bool:
    if by_path is not None and by_path.fullmatch(rel):
        return True
    if by_name is None or (not recursive and "/" in rel):
        return False
    return by_name.fullmatch(rel.rpartition("/")[2]) is not None


def _dir_id(directory: Path) -> _DirId:
    stat = directory.stat()
    return (stat.st_dev, stat.st_ino)


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            # In the file system's order: every caller sorts the result (order_images,
            # list_images), and natural_key is a total order.
            return list(entries)
    except OSError as error:
        logger.warning("skipping unreadable folder %s: %s", directory, error)
        return []


def _walk(folder: Path, descend: bool) -> Iterator[str]:
    # Each directory carries the identities of its ancestors: a symlink pointing back up
    # the tree is a loop and is skipped, while a symlink to a sibling is still followed.
    stack: list[tuple[Path, str, frozenset[_DirId]]] = [(folder, "", frozenset())]
    while stack:
        directory, prefix, ancestors = stack.pop()
        identity = _dir_id(directory)
        if identity in ancestors:
            logger.warning("skipping symlink loop at %s", directory)
            continue
        for entry in _scan(directory):
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_file():
                yield rel
            elif descend and entry.is_dir():
                stack.append((Path(entry.path), rel + "/", ancestors | {identity}))


def find_images(folder: Path, patterns: Iterable[str], recursive: bool) -> list[str]:
    """Relative POSIX paths of the files under folder that match a pattern, unordered.

    A pattern without '/' matches the file name (at any depth only when recursive); a
    pattern with '/' is an explicit path request and matches the whole relative path.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    compiled = [("/" in pattern, compile_pattern(pattern)) for pattern in patterns]
    by_path = _combined([regex for has_slash, regex in compiled if has_slash])
    by_name = _combined([regex for has_slash, regex in compiled if not has_slash])
    descend = recursive or by_path is not None
    return [rel for rel in _walk(folder, descend) if _matches(rel, by_path, by_name, recursive)]


def list_images(folder: Path, patterns: Iterable[str], recursive: bool) -> list[str]:
    """find_images in natural order."""
    return sorted(find_images(folder, patterns, recursive), key=natural_key)


def _natural_parts(text: str) -> tuple[str | int, ...]:
    # One key per file is most of the cost of listing a folder: the digit runs are every
    # other part of the split, turned into numbers in one slice assignment.
    parts: list[str | int] = list(_DIGIT_RUNS.split(text))
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


# Few extensions recur across a folder: each is split once.
_extension_parts = functools.lru_cache(maxsize=256)(_natural_parts)


def natural_key(name: str) -> NaturalKey:
    """Sort key: 'img2' before 'img10', case-insensitive, ties broken by the exact name.

    The extension is compared last, so 'v1.png' comes before 'v1.9.png'. NFC
    normalisation and the exact-name tie-break make the order the same on every machine,
    which sharding across machines relies on (macOS reports names decomposed).
    """
    # NFC leaves ASCII as it is; most names are ASCII, and skipping it is a quarter of the key.
    text = name if name.isascii() else unicodedata.normalize("NFC", name)
    stem, extension = posixpath.splitext(text.casefold())
    return (_natural_parts(stem), _extension_parts(extension), name)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        # A file that vanished after listing sorts last; loading it reports the failure.
        return 2**63


def order_images(paths: Iterable[str], order: str, folder: Path, seed: int) -> list[str]:
    """paths in the requested order; "shuffle" is the same for the same seed everywhere."""
    natural = sorted(paths, key=natural_key)
    if order == "natural":
        return natural
    if order == "name":
        return sorted(natural)
    if order == "modified":
        return sorted(natural, key=lambda rel: _mtime_ns(folder / rel))
    if order == "shuffle":
        random.Random(seed).shuffle(natural)
        return natural
    raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")


def _check_selection(start_index: int, limit: int, shard_index: int, shard_count: int) -> None:
    if start_index < 0:
        raise ValueError(f"start_index must be >= 0; got {start_index}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 means no limit); got {limit}")
    if shard_count < 1:
        raise ValueError(f"shard_count must be >= 1; got {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in 0..{shard_count - 1}; got {shard_index}")


def select(
    paths: Sequence[Item], start_index: int, limit: int, shard_index: int, shard_count: int
) -> list[Item]:
    """This shard's items (i % shard_count == shard_index), then start_index and limit."""
    _check_selection(start_index, limit, shard_index, shard_count)
    shard = list(paths[shard_index::shard_count])[start_index:]
    return shard[:limit] if limit else shard
