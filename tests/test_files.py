"""A stage's outputs appear together or not at all, and the files they replace survive a failure."""

import errno
import os

import pytest

from pipeline import files
from pipeline.files import OutputSet, WriteError


def test_outputs_appear_together(tmp_path):
    a, b = tmp_path / "models" / "a.bin", tmp_path / "metrics" / "b.json"
    outputs = OutputSet([a, b])
    outputs.check()
    assert not a.parent.exists()  # checking creates nothing
    with outputs.commit() as staged:
        staged.write_bytes(a, b"weights")
        assert not a.exists()  # staged beside it, not yet in place
        staged.write_json(b, {"accuracy": 0.5})
    assert a.read_bytes() == b"weights" and b.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.bin", "b.json"]


def test_a_failed_rename_puts_every_output_back_as_it_was(tmp_path):
    a, b, c = (tmp_path / name for name in ("a.bin", "b.json", "c.json"))
    a.write_bytes(b"old weights")  # from an earlier run: must survive this one's failure
    c.mkdir()  # a folder where the third output goes: its rename fails
    failing = pytest.raises(WriteError, match=r"cannot write .*c\.json: Is a directory")
    with failing, OutputSet([a, b, c]).commit() as staged:
        for path in (a, b, c):
            staged.write_bytes(path, b"new")
    assert a.read_bytes() == b"old weights" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.json"]  # no temporary files


def test_an_exception_while_staging_publishes_nothing(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with pytest.raises(RuntimeError), OutputSet([a, b]).commit() as staged:
        staged.write_bytes(a, b"x")
        raise RuntimeError("training state lost")
    assert list(tmp_path.iterdir()) == []


def test_only_declared_outputs_are_written(tmp_path):
    refused = pytest.raises(ValueError, match="not one of this stage's declared outputs")
    with refused, OutputSet([tmp_path / "a"]).commit() as staged:
        staged.write_bytes(tmp_path / "b", b"x")


def test_a_folder_that_cannot_be_written_fails_the_check(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError) as e:
        OutputSet([tmp_path / "models" / "a.bin"]).check()
    # The nearest folder that exists is probed, and named, with what to do.
    assert str(e.value) == (
        f"cannot write into {tmp_path}/: Read-only file system; make {tmp_path} writable, then "
        "rerun (nothing partial was kept)"
    )


def test_the_check_clears_what_a_killed_run_left(tmp_path):
    out = tmp_path / "a.bin"
    left = tmp_path / ".a.bin.x1y2.part"
    left.write_bytes(b"half")
    OutputSet([out]).check()
    assert not left.exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.Path, "write_bytes", full)
    with pytest.raises(WriteError) as e, OutputSet([tmp_path / "a.bin"]).commit() as staged:
        staged.write_bytes(tmp_path / "a.bin", b"x")
    assert str(e.value).startswith(
        f"cannot write {tmp_path}/a.bin: No space left on device; free space on the disk that "
        f"holds {tmp_path}, then rerun"
    )
    assert list(tmp_path.iterdir()) == []
