"""Atomic writes: a destination holds the old file or the complete new one, never a part, and new files get the
permissions an ordinary write gives them (``0o666 & ~umask``), not ``mkstemp``'s owner-only ``0o600``."""

from __future__ import annotations

import json
import os
import stat

import pytest

from hub_cards.atomic_files import atomic_path, write_json_atomically, write_text_atomically


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_permissions_of_an_ordinary_write(tmp_path, umask_027):
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    assert mode(tmp_path / "plain.txt") == 0o640
    assert mode(write_text_atomically(tmp_path / "a.txt", "x")) == 0o640
    assert mode(write_json_atomically(tmp_path / "a.json", {"a": 1})) == 0o640
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert mode(tmp_path / "b.bin") == 0o640


def test_write_json_creates_parents_keeps_unicode_and_indents_by_default(tmp_path):
    path = write_json_atomically(tmp_path / "sub" / "dir" / "out.json", {"摘要": [1, 2]})
    assert path == tmp_path / "sub" / "dir" / "out.json"
    assert path.read_text(encoding="utf-8") == '{\n  "摘要": [\n    1,\n    2\n  ]\n}'
    assert json.loads(write_json_atomically(path, {"a": 1}, indent=None).read_text()) == {"a": 1}
    assert path.read_text() == '{"a": 1}'


def test_an_error_inside_atomic_path_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("half a fi")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_atomic_path_replaces_the_destination_on_success(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_payload_that_cannot_be_serialised_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomically(tmp_path / "bad.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []
    assert json.loads(write_json_atomically(tmp_path / "ok.json", {"a": tmp_path}, default=str).read_text()) == {"a": str(tmp_path)}


def test_atomic_directory_swaps_a_whole_folder_and_keeps_the_old_one_on_error(tmp_path):
    from hub_cards.atomic_files import atomic_directory

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left behind
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old folder is gone too
    assert (target.stat().st_mode & 0o777) == 0o777 & ~_umask()


def test_atomic_directory_on_the_current_folder_stages_beside_it(tmp_path, monkeypatch):
    from hub_cards.atomic_files import atomic_directory

    work = tmp_path / "work"
    work.mkdir()
    (work / "old.txt").write_text("old")
    monkeypatch.chdir(work)
    with atomic_directory(".") as staging:
        assert staging.parent == tmp_path
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in work.iterdir()) == ["new.txt"]


def _umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask
