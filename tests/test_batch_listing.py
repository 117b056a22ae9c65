"""Tests for finding, ordering and sharding the images of a batch folder."""

from __future__ import annotations

import os
from pathlib import Path
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_clientid_bridge.batch.listing import (
    DEFAULT_PATTERNS,
    compile_pattern,
    find_images,
    list_images,
    natural_key,
    order_images,
    parse_patterns,
    select,
)

TOP_LEVEL_IMAGES = [
    "-rf.png",
    "[draft] cover.png",
    "img2.png",
    "IMG3.PNG",
    "img10.png",
    "my photo.jpg",
    "ünïcødé 東京.webp",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with the names that break naive listings."""
    files = [
        *TOP_LEVEL_IMAGES,
        ".hidden.png",
        ".git/x.png",
        "notes.txt",
        "sub/a.png",
        "sub/deeper/B.JPEG",
        "sub/.secret/c.png",
    ]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "archive.png").mkdir()  # a folder named like an image
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", DEFAULT_PATTERNS),
        ("   ", DEFAULT_PATTERNS),
        (";, ;", DEFAULT_PATTERNS),
        ("*.png", ("*.png",)),
        (" *.png ;*.JPG,, *.webp ", ("*.png", "*.JPG", "*.webp")),
        ("sub/**/*.png;my photo*.jpg", ("sub/**/*.png", "my photo*.jpg")),
    ],
    ids=["empty", "blank", "only-separators", "one", "mixed-separators", "slash-and-space"],
)
def test_parse_patterns(text: str, expected: tuple[str, ...]) -> None:
    assert parse_patterns(text) == expected


def test_default_patterns_cover_the_usual_extensions() -> None:
    extensions = {pattern.removeprefix("*.") for pattern in DEFAULT_PATTERNS}
    assert extensions == {"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"}


@pytest.mark.parametrize(
    ("pattern", "rel", "matches"),
    [
        ("a+b (1).png", "A+B (1).PNG", True),
        ("a+b (1).png", "aab (1).png", False),
        ("*.png", "dir/x.png", False),
        ("**/x.png", "x.png", True),
        ("**/x.png", "a/b c/x.png", True),
        ("a/**", "a/b/c.png", True),
        ("img[!0-9].png", "imgA.png", True),
        ("img[!0-9].png", "img7.png", False),
        ("x?.png", "x/.png", False),
        ("[&&]x", "&x", True),
        ("[^]x", "^x", True),
        ("[unclosed", "[unclosed", True),
    ],
    ids=[
        "regex-metacharacters",
        "dot-is-literal",
        "star-stays-in-one-name",
        "double-star-zero-folders",
        "double-star-many-folders",
        "trailing-double-star",
        "negated-class",
        "negated-class-miss",
        "question-mark-not-slash",
        "set-operators-literal",
        "caret-literal",
        "unclosed-bracket-literal",
    ],
)
def test_compile_pattern(pattern: str, rel: str, matches: bool) -> None:
    assert bool(compile_pattern(pattern).fullmatch(rel)) is matches


@pytest.mark.parametrize(
    ("patterns", "recursive", "expected"),
    [
        (DEFAULT_PATTERNS, False, TOP_LEVEL_IMAGES),
        (
            DEFAULT_PATTERNS,
            True,
            [*TOP_LEVEL_IMAGES[:6], "sub/a.png", "sub/deeper/B.JPEG", TOP_LEVEL_IMAGES[6]],
        ),
        (("*.PNG",), False, ["-rf.png", "[draft] cover.png", "img2.png", "IMG3.PNG", "img10.png"]),
        (("img?.png",), False, ["img2.png", "IMG3.PNG"]),
        (("img[0-9][0-9].png",), False, ["img10.png"]),
        (("[!i]*.png",), False, ["-rf.png", "[draft] cover.png"]),
        (("[[]draft]*",), False, ["[draft] cover.png"]),
        (("*.jpeg",), False, []),
        (("*.jpeg",), True, ["sub/deeper/B.JPEG"]),
        (("sub/*.png",), False, ["sub/a.png"]),
        (("**/*.jpeg",), False, ["sub/deeper/B.JPEG"]),
        (("sub/**/*.png", "*.webp"), False, ["sub/a.png", "ünïcødé 東京.webp"]),
        (("*photo*",), True, ["my photo.jpg"]),
        (
            ("sub/**/*.jpeg", "*.png"),
            False,
            [
                "-rf.png",
                "[draft] cover.png",
                "img2.png",
                "IMG3.PNG",
                "img10.png",
                "sub/deeper/B.JPEG",
            ],
        ),
    ],
    ids=[
        "defaults-top-level",
        "defaults-recursive",
        "uppercase-pattern",
        "question-mark",
        "char-class",
        "negated-class",
        "literal-bracket",
        "top-level-only",
        "name-at-any-depth",
        "slash-pattern",
        "double-star",
        "two-patterns",
        "space-in-name",
        "name-pattern-stays-top-level-while-a-path-pattern-descends",
    ],
)
def test_list_images(
    tree: Path, patterns: tuple[str, ...], recursive: bool, expected: list[str]
) -> None:
    assert list_images(tree, patterns, recursive) == expected


def test_list_images_follows_a_symlink_to_a_sibling_folder(tree: Path) -> None:
    (tree / "linked").symlink_to(tree / "sub" / "deeper", target_is_directory=True)
    assert list_images(tree, ("*.jpeg",), True) == ["linked/B.JPEG", "sub/deeper/B.JPEG"]


def test_list_images_survives_a_symlink_loop(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    found = list_images(tree, ("**",), True)
    assert not any(rel.startswith("sub/loop") for rel in found)
    assert "symlink loop" in caplog.text


def test_list_images_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "nope", DEFAULT_PATTERNS, False)


def test_a_bad_pattern_is_named(tree: Path) -> None:
    with pytest.raises(ValueError, match=r"invalid file pattern '\[z-a\]\.png'"):
        list_images(tree, ("[z-a].png",), False)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["img10.png", "img2.png", "img1.png"], ["img1.png", "img2.png", "img10.png"]),
        (["B.png", "a.png", "C.png"], ["a.png", "B.png", "C.png"]),
        (["a", "A"], ["A", "a"]),
        (["x1", "x01", "x001"], ["x001", "x01", "x1"]),
        (["v1.10.png", "v1.9.png", "v1.png"], ["v1.png", "v1.9.png", "v1.10.png"]),
        (["-b", "a", " c"], [" c", "-b", "a"]),
        (
            ["photo (1).jpg", "photo.jpg", "img-2.png", "img.png"],
            ["img.png", "img-2.png", "photo.jpg", "photo (1).jpg"],
        ),
        (["s/img10.png", "s/img9.png", "r.png"], ["r.png", "s/img9.png", "s/img10.png"]),
    ],
    ids=[
        "numbers",
        "case",
        "case-tie",
        "zero-padding-tie",
        "dotted",
        "punctuation",
        "stem-before-extension",
        "folders",
    ],
)
def test_natural_key(names: list[str], expected: list[str]) -> None:
    assert sorted(names, key=natural_key) == expected


def test_natural_key_ignores_unicode_normalisation() -> None:
    # Unnormalised, "e" + U+0301 would sort before U+00E9 whatever the numbers say.
    decomposed, composed = "cafe\u0301 10.png", "caf\u00e9 2.png"
    assert sorted([decomposed, composed], key=natural_key) == [composed, decomposed]


@settings(database=None, deadline=None)
@given(st.lists(st.text(), unique=True), st.randoms(use_true_random=False))
def test_natural_order_does_not_depend_on_input_order(names: list[str], rng: Random) -> None:
    shuffled = list(names)
    rng.shuffle(shuffled)
    assert sorted(shuffled, key=natural_key) == sorted(names, key=natural_key)


ORDER_NAMES = ["img10.png", "IMG3.PNG", "img2.png", "b/img1.png"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("natural", ["b/img1.png", "img2.png", "IMG3.PNG", "img10.png"]),
        ("name", ["IMG3.PNG", "b/img1.png", "img10.png", "img2.png"]),
    ],
    ids=["natural", "name"],
)
def test_order_by_name(tmp_path: Path, order: str, expected: list[str]) -> None:
    assert order_images(ORDER_NAMES, order, tmp_path, 0) == expected


def test_order_modified_breaks_ties_naturally(tmp_path: Path) -> None:
    mtimes = {"img10.png": 300, "img2.png": 100, "IMG3.PNG": 100, "old.png": 50}
    for name, mtime in mtimes.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    ordered = order_images([*mtimes, "vanished.png"], "modified", tmp_path, 0)
    assert ordered == ["old.png", "img2.png", "IMG3.PNG", "img10.png", "vanished.png"]


def test_shuffle_is_deterministic_per_seed(tmp_path: Path) -> None:
    names = [f"img{number}.png" for number in range(30)]
    first = order_images(names, "shuffle", tmp_path, 7)
    assert order_images(list(reversed(names)), "shuffle", tmp_path, 7) == first
    assert sorted(first) == sorted(names)
    assert first != sorted(names, key=natural_key)
    assert order_images(names, "shuffle", tmp_path, 8) != first


def test_unknown_order_names_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="natural, name, modified, shuffle; got 'random'"):
        order_images(ORDER_NAMES, "random", tmp_path, 0)


LETTERS = list("abcdefghij")


@pytest.mark.parametrize(
    ("start_index", "limit", "shard_index", "shard_count", "expected"),
    [
        (0, 0, 0, 1, LETTERS),
        (3, 0, 0, 1, list("defghij")),
        (3, 2, 0, 1, ["d", "e"]),
        (0, 0, 0, 3, ["a", "d", "g", "j"]),
        (0, 0, 2, 3, ["c", "f", "i"]),
        (1, 2, 0, 3, ["d", "g"]),
        (50, 0, 0, 1, []),
        (0, 50, 1, 2, ["b", "d", "f", "h", "j"]),
    ],
    ids=[
        "everything",
        "start",
        "start-and-limit",
        "shard-0-of-3",
        "shard-2-of-3",
        "start-applies-within-shard",
        "start-past-end",
        "limit-past-end",
    ],
)
def test_select(
    start_index: int, limit: int, shard_index: int, shard_count: int, expected: list[str]
) -> None:
    assert select(LETTERS, start_index, limit, shard_index, shard_count) == expected


@pytest.mark.parametrize(
    ("start_index", "limit", "shard_index", "shard_count", "message"),
    [
        (-1, 0, 0, 1, r"start_index must be >= 0; got -1"),
        (0, -1, 0, 1, r"limit must be >= 0 \(0 means no limit\); got -1"),
        (0, 0, 0, 0, r"shard_count must be >= 1; got 0"),
        (0, 0, 3, 3, r"shard_index must be in 0\.\.2; got 3"),
        (0, 0, -1, 3, r"shard_index must be in 0\.\.2; got -1"),
    ],
    ids=["negative-start", "negative-limit", "no-shards", "shard-too-high", "negative-shard"],
)
def test_select_rejects(
    start_index: int, limit: int, shard_index: int, shard_count: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        select(LETTERS, start_index, limit, shard_index, shard_count)


@settings(database=None, deadline=None)
@given(st.lists(st.text(), max_size=60), st.integers(min_value=1, max_value=9))
def test_shards_cover_the_list_exactly_once(items: list[str], shard_count: int) -> None:
    positions = list(range(len(items)))
    covered = [
        position
        for shard_index in range(shard_count)
        for position in select(positions, 0, 0, shard_index, shard_count)
    ]
    assert sorted(covered) == positions


@settings(database=None, deadline=None)
@given(
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=12),
    st.data(),
)
def test_resuming_a_shard_continues_where_it_stopped(
    size: int, shard_count: int, first_run: int, data: st.DataObject
) -> None:
    positions = list(range(size))
    shard_index = data.draw(st.integers(min_value=0, max_value=shard_count - 1))
    head = select(positions, 0, first_run, shard_index, shard_count) if first_run else []
    tail = select(positions, len(head), 0, shard_index, shard_count)
    assert head + tail == select(positions, 0, 0, shard_index, shard_count)


def test_find_images_finds_what_list_images_lists_in_any_order(tmp_path: Path) -> None:
    for name in ("b10.png", "b2.png", "a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images(tmp_path, DEFAULT_PATTERNS, False)
    assert sorted(found) == sorted(list_images(tmp_path, DEFAULT_PATTERNS, False))
    assert list_images(tmp_path, DEFAULT_PATTERNS, False) == ["a.PNG", "b2.png", "b10.png"]


def test_natural_key_of_non_ascii_names_is_normalised() -> None:
    decomposed, composed = "Cafe\u0301 2.png", "Caf\u00e9 2.png"
    assert natural_key(decomposed)[:2] == natural_key(composed)[:2]
    assert natural_key("IMG10.png")[:2] == (("img", 10, ""), (".png",))
