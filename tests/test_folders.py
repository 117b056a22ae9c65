"""Folder policy: on a reachable server the batch nodes stay inside the allowed roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_clientid_bridge.batch import folders
from comfy_clientid_bridge.batch.folders import (
    ROOTS_ENV,
    FolderPolicy,
    configured_roots,
    is_inside,
    is_loopback,
    make_policy,
    output_base,
    resolve_input_folder,
)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ComfyUI's input and output folders under tmp_path, a private folder beside them,
    and symlinks in input pointing out and in."""
    for name in ("input/photos", "output", "temp", "private/secret", "Shared"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "input" / "escape").symlink_to(tmp_path / "private", target_is_directory=True)
    (tmp_path / "input" / "back").symlink_to(tmp_path / "output", target_is_directory=True)
    monkeypatch.setattr(folders.internals, "input_directory", lambda: tmp_path / "input")
    monkeypatch.setattr(folders.internals, "output_directory", lambda: tmp_path / "output")
    return tmp_path


def policy(tree: Path, *, enforced: bool = True, extra: tuple[str, ...] = ()) -> FolderPolicy:
    return make_policy(
        listen=["0.0.0.0"] if enforced else ["127.0.0.1"],
        comfy_folders=[tree / "input", tree / "output", tree / "temp"],
        configured=[tree / e for e in extra],
        roots_file=tree / "user" / "clientid_bridge" / "roots.txt",
    )


case_insensitive = os.path.exists(str(Path(__file__)).upper())

# (id, loader folder as typed, allowed on a reachable server)
LOADER_CASES = [
    ("relative-inside", "photos", True),
    ("relative-trailing-slash", "photos/", True),
    ("relative-dot-segments", "./photos/../photos", True),
    ("empty-is-input", "", True),
    ("dotdot-out", "../private", False),
    ("dotdot-out-and-back", "../input/photos", True),
    ("dotdot-to-output", "../output", True),
    ("symlink-pointing-out", "escape/secret", False),
    ("symlink-pointing-to-a-root", "back", True),
    ("absolute-outside", "{tree}/private", False),
    ("absolute-outside-trailing-slash", "{tree}/private/", False),
    ("absolute-inside", "{tree}/input/photos", True),
    ("absolute-root-itself", "{tree}/output", True),
    ("absolute-prefix-lookalike", "{tree}/input-other", False),
    ("absolute-case-variant", "{tree}/INPUT/photos", case_insensitive),
    ("absolute-temp", "{tree}/temp", True),
    ("filesystem-root", "/", False),
]


@pytest.mark.parametrize(
    ("typed", "allowed_when_reachable"),
    [(typed, ok) for _, typed, ok in LOADER_CASES],
    ids=[name for name, _, _ in LOADER_CASES],
)
@pytest.mark.parametrize("reachable", [True, False], ids=["reachable", "loopback"])
def test_loader_folder(
    tree: Path, typed: str, allowed_when_reachable: bool, reachable: bool
) -> None:
    folder = typed.format(tree=tree)
    rules = policy(tree, enforced=reachable)
    if allowed_when_reachable or not reachable:
        assert resolve_input_folder(folder, rules).name == Path(folder).name or folder in ("", "/")
    else:
        with pytest.raises(ValueError, match=ROOTS_ENV) as refused:
            resolve_input_folder(folder, rules)
        assert str(refused.value).startswith("folder '")
        assert "roots.txt" in str(refused.value)


# (id, saver output_folder as typed, allowed on a reachable server)
SAVER_CASES = [
    ("empty-is-output", "", True),
    ("absolute-inside", "{tree}/output/run1", True),
    ("not-yet-created-inside", "{tree}/output/new/deeper", True),
    ("absolute-outside", "{tree}/private/run1", False),
    ("dotdot-out", "{tree}/output/../private", False),
    ("symlink-pointing-out", "{tree}/input/escape/run1", False),
    ("trailing-slash-outside", "{tree}/private/", False),
    ("case-variant", "{tree}/OUTPUT/run1", case_insensitive),
]


@pytest.mark.parametrize(
    ("typed", "allowed_when_reachable"),
    [(typed, ok) for _, typed, ok in SAVER_CASES],
    ids=[name for name, _, _ in SAVER_CASES],
)
def test_saver_output_folder(tree: Path, typed: str, allowed_when_reachable: bool) -> None:
    folder = typed.format(tree=tree)
    if allowed_when_reachable:
        base, in_output = output_base(folder, policy(tree))
        assert in_output == (folder == "")
        assert is_inside(base, [tree / "output"])
    else:
        with pytest.raises(ValueError, match="output_folder") as refused:
            output_base(folder, policy(tree))
        assert "roots.txt" in str(refused.value)
    assert output_base(folder, policy(tree, enforced=False))[0] is not None  # loopback: free


def test_saver_relative_folder_is_refused_everywhere(tree: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        output_base("relative/out", policy(tree, enforced=False))


def test_configured_roots_allow_a_folder(tree: Path) -> None:
    assert resolve_input_folder(str(tree / "Shared"), policy(tree, extra=("Shared",)))
    with pytest.raises(ValueError):
        resolve_input_folder(str(tree / "Shared"), policy(tree))


@pytest.mark.parametrize(
    ("listen", "configured", "enforced"),
    [
        (["127.0.0.1"], [], False),
        (["127.0.0.1", "::1", "localhost"], [], False),
        (["0.0.0.0"], [], True),
        (["::"], [], True),
        (["127.0.0.1", "192.168.1.5"], [], True),
        (["my-host.lan"], [], True),
        (["127.0.0.1"], ["/srv/shared"], True),
    ],
    ids=[
        "loopback",
        "all-loopback-forms",
        "any-ipv4",
        "any-ipv6",
        "one-lan-address",
        "hostname",
        "loopback-with-roots-configured",
    ],
)
def test_policy_is_enforced_beyond_loopback_or_when_configured(
    tree: Path, listen: list[str], configured: list[str], enforced: bool
) -> None:
    rules = make_policy(
        listen=listen,
        comfy_folders=[tree / "input"],
        configured=[Path(c) for c in configured],
        roots_file=tree / "roots.txt",
    )
    assert rules.enforced == enforced


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.4.5.6", True),
        ("::1", True),
        ("[::1]", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.2", False),
        ("example.org", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) == loopback


def test_roots_from_env_and_file(tmp_path: Path) -> None:
    roots_file = tmp_path / "roots.txt"
    roots_file.write_text("# shared folders\n/srv/a\n\n  /srv/b  # team b\nrelative/ignored\n")
    environ = {ROOTS_ENV: os.pathsep.join(["/data/x", "", "/data/y"])}
    assert configured_roots(environ, roots_file) == [
        Path(p) for p in ("/data/x", "/data/y", "/srv/a", "/srv/b")
    ]
    assert configured_roots({}, tmp_path / "missing.txt") == []


@pytest.mark.parametrize("typed", ["{tree}/output/../output/run", "{tree}/input/back/run"])
def test_saver_base_is_resolved(tree: Path, typed: str) -> None:
    """The saver names what it wrote relative to this base; its targets are resolved."""
    base, _ = output_base(typed.format(tree=tree), policy(tree, enforced=False))
    assert base == (tree / "output" / "run").resolve()


def test_roots_keep_spaces_and_hashes_where_they_belong(tmp_path: Path) -> None:
    """A file line ends at its first '#'; the env var has no comments (a folder may hold a
    '#'); spaces inside a folder name are kept in both."""
    roots_file = tmp_path / "roots.txt"
    roots_file.write_text("/srv/team share  # shared # by two teams\n")
    environ = {ROOTS_ENV: "/data/run#2"}
    assert configured_roots(environ, roots_file) == [Path("/data/run#2"), Path("/srv/team share")]


def test_a_root_that_is_gone_allows_nothing(tmp_path: Path) -> None:
    """A configured root deleted since: a real folder elsewhere is still outside it."""
    (tmp_path / "elsewhere").mkdir()
    assert not is_inside(tmp_path / "elsewhere", [tmp_path / "gone"])


def test_the_error_names_the_setting_the_folder_and_the_fix(tree: Path) -> None:
    with pytest.raises(ValueError) as refused:
        output_base(f"{tree}/private", policy(tree))
    message = str(refused.value)
    assert message.startswith(f"output_folder {str(tree / 'private')!r} resolves to ")
    assert ROOTS_ENV in message and "roots.txt" in message
    with pytest.raises(ValueError) as refused:
        resolve_input_folder("../private", policy(tree))
    assert str(refused.value).startswith(f"folder {str(tree / 'input' / '../private')!r} ")


def test_the_running_servers_policy_names_its_roots_file(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folders.internals, "temp_directory", lambda: tree / "temp")
    monkeypatch.setattr(folders.internals, "user_directory", lambda: tree / "user")
    monkeypatch.setattr(folders.internals, "listen_addresses", lambda: ["0.0.0.0"])
    (tree / "user" / "clientid_bridge").mkdir(parents=True)
    (tree / "user" / "clientid_bridge" / "roots.txt").write_text(f"{tree}/Shared\n")
    current = folders.current_policy({})
    assert current.enforced and (tree / "Shared").resolve() in current.roots
    assert str(tree / "user" / "clientid_bridge" / "roots.txt") in current.allow_hint


def test_a_policy_that_checks_nothing_resolves_no_roots(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader reads the policy on every image: on a loopback server without roots it
    must not walk ComfyUI's folders each time."""
    resolved: list[Path] = []
    resolve = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda p, *a: resolved.append(p) or resolve(p, *a))
    assert policy(tree, enforced=False).roots == () and resolved == []
    assert policy(tree).roots == tuple(
        (tree / name).resolve() for name in ("input", "output", "temp")
    )
