"""The route the runner asks whether a server reads its folder: readable or not, and nothing
about folders outside the allowed roots on a server others can reach."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from comfy_clientid_bridge.batch import folder_check
from comfy_clientid_bridge.batch.folder_check import (
    NOT_ALLOWED,
    UNREADABLE,
    folder_answer,
    folder_readable,
)
from comfy_clientid_bridge.batch.folders import FolderPolicy, make_policy


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """ComfyUI's input with photos (one a symlink out of the roots), a private folder beside."""
    for name in ("input/photos", "output", "temp", "private/secret"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "input/photos/a.png").write_bytes(b"png")
    (tmp_path / "private/secret/b.png").write_bytes(b"png")
    (tmp_path / "input/photos/out.png").symlink_to(tmp_path / "private/secret/b.png")
    (tmp_path / "input/file.txt").write_text("not a folder")
    (tmp_path / "input/file.txt").chmod(0o755)  # readable and "enterable": still no folder
    (tmp_path / "input/photos/sub.png").mkdir()  # an image's name, but a folder
    return tmp_path


def policy(tree: Path, *, reachable: bool) -> FolderPolicy:
    return make_policy(
        listen=["0.0.0.0"] if reachable else ["127.0.0.1"],
        comfy_folders=[tree / "input", tree / "output", tree / "temp"],
        configured=[],
        roots_file=tree / "user" / "roots.txt",
    )


# (id, folder under the tree, file, reachable beyond loopback, expected (readable, why))
CASES = [
    ("inside-with-its-file", "input/photos", "a.png", True, (True, "")),
    ("inside-folder-only", "input/photos", "", True, (True, "")),
    ("inside-file-missing", "input/photos", "zz.png", True, (False, UNREADABLE)),
    ("inside-folder-missing", "input/nothing", "a.png", True, (False, UNREADABLE)),
    ("inside-not-a-folder", "input/file.txt", "", True, (False, UNREADABLE)),
    ("inside-file-is-a-folder", "input/photos", "sub.png", True, (False, UNREADABLE)),
    ("outside-exists", "private/secret", "b.png", True, (False, NOT_ALLOWED)),
    ("outside-missing", "private/none", "b.png", True, (False, NOT_ALLOWED)),
    ("file-symlinked-out", "input/photos", "out.png", True, (False, NOT_ALLOWED)),
    ("file-dotdot", "input/photos", "../../private/secret/b.png", True, (False, NOT_ALLOWED)),
    ("loopback-outside-exists", "private/secret", "b.png", False, (True, "")),
    ("loopback-outside-missing", "private/none", "", False, (False, UNREADABLE)),
]


@pytest.mark.parametrize(
    ("folder", "file", "reachable", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_answer_says_readable_only_inside_the_policy(
    tree: Path, folder: str, file: str, reachable: bool, expected: tuple[bool, str]
) -> None:
    answer = folder_answer(str(tree / folder), file, policy(tree, reachable=reachable))
    assert (answer["readable"], answer["why"]) == expected


@pytest.mark.parametrize("folder", ["input/photos", "", "  "], ids=["relative", "empty", "blank"])
def test_only_an_absolute_folder_is_answered(tree: Path, folder: str) -> None:
    answer = folder_answer(folder, "", policy(tree, reachable=False))
    assert answer == {"readable": False, "why": "not an absolute path"}


@pytest.mark.parametrize(
    ("folder", "file", "readable"),
    [
        ("input/photos", "a.png", True),
        ("input/photos", "zz.png", False),
        ("input/photos", None, True),
        ("private/secret", "b.png", False),
        (None, "a.png", False),
    ],
    ids=["readable", "its-file-missing", "no-file-asked", "outside", "no-path"],
)
async def test_the_route_answers_with_the_servers_current_policy(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder: str | None,
    file: str | None,
    readable: bool,
) -> None:
    monkeypatch.setattr(folder_check, "current_policy", lambda: policy(tree, reachable=True))
    query = [] if folder is None else [f"path={tree / folder}"]
    query += [] if file is None else [f"file={file}"]
    request = make_mocked_request("GET", "/clientid_bridge/folder?" + "&".join(query))
    reply = await folder_readable(request)
    assert reply.status == 200
    assert reply.text is not None
    answer = json.loads(reply.text)
    assert answer["readable"] is readable
    assert str(tree) not in reply.text  # nothing of the server's folders in the answer
