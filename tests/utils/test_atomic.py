"""detkit.utils.atomic: a write either replaces the file whole or leaves the old one whole."""
import json
import os

import pytest

from detkit.utils import atomic
from detkit.utils.atomic import atomic_write, atomic_write_bytes, atomic_write_text

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(saved)


def test_content_is_complete_and_parents_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "out.bin"
    data = os.urandom(3 * 2**20 + 17)  # a few MB, more than any buffer
    assert atomic_write_bytes(path, data) == path
    assert path.read_bytes() == data
    assert atomic_write_text(tmp_path / "t.txt", "héllo\nwörld\n") == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_bytes() == "héllo\nwörld\n".encode("utf-8")  # UTF-8, not the locale's
    with atomic_write(str(tmp_path / "x.json"), "w") as f:  # str paths too
        json.dump({"k": [1, 2]}, f)
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t.txt", "x.json"]  # no temp file left


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old, and longer than the new content\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_whole(tmp_path, error):
    path = tmp_path / "state.bin"
    path.write_bytes(b"the old, good content")
    with pytest.raises(type(error)):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            f.flush()
            temps = [p.name for p in tmp_path.iterdir() if p != path]
            assert len(temps) == 1 and temps[0].startswith(".state.bin.") and temps[0].endswith(".tmp")
            assert path.read_bytes() == b"the old, good content"  # untouched while writing
            raise error
    assert path.read_bytes() == b"the old, good content"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # the temp file is gone


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        with atomic_write(tmp_path / "new.json", "w") as f:
            json.dump({"x": object()}, f)  # not serialisable, after some bytes were written
    assert list(tmp_path.iterdir()) == []


def test_a_failing_rename_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def no_replace(src, dst):
        raise OSError("simulated: rename refused")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        calls.append("replace")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert calls[:2] == ["fsync", "replace"]  # the file's data, then the rename (then the folder, on POSIX)


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_permissions_are_those_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(path, "w") gives under this umask
    path = tmp_path / "atomic.txt"
    path.write_text("old")
    os.chmod(path, 0o600)  # the new file does not inherit the old one's (or mkstemp's 0o600) bits
    atomic_write_text(path, "new")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask == plain.stat().st_mode & 0o777
    assert atomic._umask() == mask
    assert os.umask(mask) == mask  # reading the umask did not change it


def test_bad_modes_are_refused(tmp_path):
    for mode in ("a", "r", "w+", "xb"):
        with pytest.raises(ValueError, match="^atomic_write: mode"):
            with atomic_write(tmp_path / "f", mode):
                pass
    with pytest.raises(ValueError, match="^atomic_write: encoding"):
        with atomic_write(tmp_path / "f", "wb", encoding="utf-8"):
            pass
    assert list(tmp_path.iterdir()) == []
