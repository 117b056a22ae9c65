"""Tests for output names, path safety, collision policies and atomic writes."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from comfy_clientid_bridge.batch import naming
from comfy_clientid_bridge.batch.naming import (
    atomic_write_bytes,
    atomic_writer,
    check_safe_relpath,
    choose_target,
    output_relpath,
    resolve_inside,
)


class Boom(Exception):
    """Stands for whatever fails while an output is being written."""


@pytest.mark.parametrize(
    ("source", "prefix", "suffix", "extension", "subfolder", "expected"),
    [
        ("x.jpg", "", "", "png", "", "x.png"),
        ("a/b/x.jpg", "pre_", "_s", "png", "out", "out/a/b/pre_x_s.png"),
        ("my photo.JPG", "", "", ".webp", "out/sub/", "out/sub/my photo.webp"),
        ("-rf.png", "", "_v2", "jpg", ".", "-rf_v2.jpg"),
        ("ünï/東京 1.png", "✓", "", "png", "résultat", "résultat/ünï/✓東京 1.png"),
        ("img.tar.gz.png", "", "", "PNG", "", "img.tar.gz.PNG"),
        ("noext", "..", "..", "png", "", "..noext...png"),
    ],
    ids=["plain", "mirrored", "space-dot-ext", "leading-dash", "unicode", "many-dots", "dots"],
)
def test_output_relpath(
    source: str, prefix: str, suffix: str, extension: str, subfolder: str, expected: str
) -> None:
    result = output_relpath(source, prefix, suffix, extension, subfolder)
    assert result == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("source", "prefix", "suffix", "extension", "subfolder", "message"),
    [
        ("x.png", "../", "", "png", "", "prefix must not contain"),
        ("x.png", "/abs", "", "png", "", "prefix must not contain"),
        ("x.png", "..\\", "", "png", "", "prefix must not contain"),
        ("x.png", "", "/../x", "png", "", "suffix must not contain"),
        ("x.png", "", "", "png", "../out", r"'\.\.' component not allowed in '\.\./out'"),
        ("x.png", "", "", "png", "out/../../b", r"'\.\.' component not allowed"),
        ("x.png", "", "", "png", "/abs", r"absolute path not allowed: '/abs'"),
        ("x.png", "", "", "png", "C:/x", r"drive letter not allowed: 'C:'"),
        ("x.png", "", "", "png", "out\x00", "NUL byte"),
        ("../x.png", "", "", "png", "", r"'\.\.' component not allowed in '\.\./x\.png'"),
        ("x.png", "", "", "png/../x", "", "extension must be"),
        ("x.png", "", "", "", "", "extension must be"),
    ],
    ids=[
        "prefix-dotdot",
        "prefix-absolute",
        "prefix-backslash",
        "suffix-slash",
        "subfolder-dotdot",
        "subfolder-climbs",
        "subfolder-absolute",
        "subfolder-drive",
        "subfolder-nul",
        "source-dotdot",
        "extension-path",
        "extension-empty",
    ],
)
def test_output_relpath_rejects(
    source: str, prefix: str, suffix: str, extension: str, subfolder: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        output_relpath(source, prefix, suffix, extension, subfolder)


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("a.png", "a.png"),
        ("a/./b//c.png", "a/b/c.png"),
        ("a\\b.png", "a/b.png"),
        ("-rf/ x .png", "-rf/ x .png"),
        (".hidden/..x", ".hidden/..x"),
        (PurePosixPath("out/x.png"), "out/x.png"),
    ],
    ids=["plain", "redundant-parts", "backslash", "dash-and-spaces", "dots-in-names", "purepath"],
)
def test_check_safe_relpath_accepts(rel: str | PurePosixPath, expected: str) -> None:
    assert check_safe_relpath(rel) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("/etc/passwd", r"absolute path not allowed: '/etc/passwd'"),
        ("\\\\server\\share", "absolute path not allowed"),
        ("c:evil.png", r"drive letter not allowed: 'c:'"),
        ("a/../../b", r"'\.\.' component not allowed in 'a/\.\./\.\./b'"),
        ("a\\..\\b", r"'\.\.' component not allowed"),
        ("a\x00b", "NUL byte in path"),
        ("", "empty path name"),
        ("././/", "empty path name"),
    ],
    ids=["absolute", "unc", "drive", "dotdot", "backslash-dotdot", "nul", "empty", "only-dots"],
)
def test_check_safe_relpath_rejects(rel: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_safe_relpath(rel)


def test_resolve_inside_allows_new_and_nested_paths(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "new/sub/x.png") == tmp_path.resolve() / "new/sub/x.png"


def test_resolve_inside_allows_symlinks_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert resolve_inside(tmp_path, "alias/x.png") == tmp_path.resolve() / "real/x.png"


@pytest.mark.parametrize(
    ("link", "points_to", "rel"),
    [("escape", "", "escape/x.png"), ("x.png", "stolen.png", "x.png")],
    ids=["folder-link", "file-link"],
)
def test_resolve_inside_rejects_symlink_escape(
    tmp_path: Path, link: str, points_to: str, rel: str
) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / link).symlink_to(outside / points_to)
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(base, rel)


def test_resolve_inside_rejects_dotdot(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.\.' component"):
        resolve_inside(tmp_path, "../x.png")


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    for name in ["x.png", "x_1.png", "my photo.png"]:
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "policy", "expected"),
    [
        ("x.png", "overwrite", "x.png"),
        ("new.png", "overwrite", "new.png"),
        ("x.png", "skip", None),
        ("new.png", "skip", "new.png"),
        ("dangling.png", "skip", None),
        ("new.png", "increment", "new.png"),
        ("x.png", "increment", "x_2.png"),
        ("my photo.png", "increment", "my photo_1.png"),
        ("dangling.png", "increment", "dangling_1.png"),
    ],
    ids=[
        "overwrite-existing",
        "overwrite-new",
        "skip-existing",
        "skip-new",
        "skip-dangling-symlink",
        "increment-new",
        "increment-past-existing",
        "increment-with-space",
        "increment-past-dangling-symlink",
    ],
)
def test_choose_target(outputs: Path, name: str, policy: str, expected: str | None) -> None:
    result = choose_target(outputs / name, policy)
    assert result == (None if expected is None else outputs / expected)


def test_increment_gives_up_after_max_increment(
    outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(naming, "MAX_INCREMENT", 1)
    with pytest.raises(FileExistsError, match="after 1 attempts"):
        choose_target(outputs / "x.png", "increment")


def test_choose_target_rejects_unknown_policy(outputs: Path) -> None:
    with pytest.raises(ValueError, match="overwrite, skip, increment; got 'rename'"):
        choose_target(outputs / "x.png", "rename")


def test_increment_only_checks_candidate_names(
    outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("choose_target must not list the folder")

    for name in ["listdir", "scandir"]:
        monkeypatch.setattr(os, name, forbidden)
    monkeypatch.setattr(Path, "iterdir", forbidden)
    monkeypatch.setattr(Path, "glob", forbidden)
    checked: list[str] = []
    real_lstat = os.lstat

    def spy_lstat(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        checked.append(os.path.basename(path))
        return real_lstat(path)

    monkeypatch.setattr(os, "lstat", spy_lstat)
    assert choose_target(outputs / "x.png", "increment") == outputs / "x_2.png"
    assert checked == ["x.png", "x_1.png", "x_2.png"]


def test_atomic_write_bytes_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "-my out ✓.png"
    target.write_bytes(b"old content")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == [target.name]


def test_atomic_writer_uses_a_hidden_temp_file_beside_the_target(tmp_path: Path) -> None:
    with atomic_writer(tmp_path / "x.png") as handle:
        handle.write(b"partial")
        (temp_name,) = os.listdir(tmp_path)
    assert temp_name.startswith(".") and temp_name.endswith(".tmp")
    assert os.listdir(tmp_path) == ["x.png"]


def test_an_exception_mid_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_writer(tmp_path / "x.png") as handle:
        handle.write(b"half an ima")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_an_existing_target_is_old_or_new_never_truncated(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old content")
    with pytest.raises(Boom), atomic_writer(target) as handle:
        handle.write(b"new")
        handle.flush()
        assert target.read_bytes() == b"old content"
        raise Boom
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["x.png"]


def test_a_failed_replace_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(*args: object) -> None:
        raise PermissionError("target is locked")

    monkeypatch.setattr(os, "replace", failing_replace)
    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(PermissionError):
        atomic_write_bytes(tmp_path / "x.png", b"new")
    assert os.listdir(tmp_path) == ["x.png"]


def test_atomic_writes_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy_fsync(descriptor: int) -> None:
        synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    atomic_write_bytes(tmp_path / "x.png", b"data")
    # The file, then its folder so that the rename itself survives a power cut.
    assert len(synced) == 2


@pytest.fixture
def umask() -> Iterator[int]:
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int) -> None:
    atomic_write_bytes(tmp_path / "x.png", b"data")
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("affix", ["prefix", "suffix"])
@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a\x00b"], ids=["slash", "backslash", "nul"])
def test_affixes_with_separators_or_nul_are_refused(affix: str, bad: str) -> None:
    values = {"prefix": "", "suffix": "", affix: bad}
    with pytest.raises(ValueError, match=f"{affix} must not contain"):
        output_relpath("a.png", values["prefix"], values["suffix"], "png", "")


def test_resolve_inside_names_what_escaped(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"^'link/x.png' resolves to .*, outside "):
        resolve_inside(tmp_path / "base", "link/x.png")


def test_increment_tries_up_to_max_increment(
    outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(naming, "MAX_INCREMENT", 2)  # x.png and x_1.png exist: x_2 is the last
    assert choose_target(outputs / "x.png", "increment") == outputs / "x_2.png"


def test_temp_names_are_hidden_short_and_unique() -> None:
    path = Path("/out") / ("n" * 40 + ".png")
    first, second = naming._temp_path(path), naming._temp_path(path)
    assert re.fullmatch(r"\.n{32}\.[0-9a-f]{12}\.tmp", first.name)
    assert first.parent == path.parent and first != second
