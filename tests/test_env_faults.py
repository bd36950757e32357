"""Environment faults (reliability round 3, class 5) are one line naming the path and the fix, exit status 2, with
nothing partial left: a name too long for a file name, a full disk while a checkpoint is written (torch reports
it as "unexpected pos"), a directory that cannot be written, an out_dir through a file. After the fault is fixed,
the rerun ends where an uninterrupted run ends."""

from __future__ import annotations

import errno

from hmem_lit import runs

from .conftest import DEBUG_YAML, tiny_overrides
from .test_bad_input import assert_one_line, created, run_cli

TOKENS = {"train.max_tokens": 8192}


def _argv(out, **extra):
    return ["-q", "train", str(DEBUG_YAML), *tiny_overrides(out, **{**TOKENS, **extra})]  # -q: the error alone


def test_a_name_too_long_for_a_file_name_is_refused_before_anything_is_made(tmp_path, capsys):
    rc, err = run_cli(_argv(tmp_path / "runs", name="n" * 240), capsys)
    assert_one_line(rc, err, "name", "at most 200 bytes")
    assert created(tmp_path) == []


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_is_exact(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    import lightning as L

    ref_rc, _ = run_cli(_argv(tmp_path / "ref", name="r"), capsys)
    assert ref_rc == 0
    real_save = L.Trainer.save_checkpoint

    def full(self, path, *a, **k):
        real_save(self, path, *a, **k)  # torch writes part of the file, then the device is full
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4240")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(L.Trainer, "save_checkpoint", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 4096, 4096))
    rc, err = run_cli(_argv(tmp_path / "runs", name="r"), capsys)
    assert_one_line(rc, err, ".last.ckpt.tmp", "no space left")
    run_dir = tmp_path / "runs" / "000_debug" / "r"
    assert not list(run_dir.rglob("*.tmp")) and not runs.is_complete(run_dir)
    monkeypatch.undo()  # space freed
    rc, _ = run_cli(_argv(tmp_path / "runs", name="r"), capsys)
    assert rc == 0
    ref = tmp_path / "ref" / "000_debug" / "r"
    assert runs.file_sha256(run_dir / runs.WEIGHTS) == runs.file_sha256(ref / runs.WEIGHTS)


def test_a_directory_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    def refuse(run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(run_dir))

    monkeypatch.setattr(runs, "mark_run_dir", refuse)  # root ignores chmod: the OS refusal is simulated
    rc, err = run_cli(_argv(tmp_path / "runs", name="ro"), capsys)
    assert_one_line(rc, err, str(tmp_path / "runs" / "000_debug" / "ro"), "permission denied")


def test_an_out_dir_through_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, err = run_cli(_argv(f / "runs", name="x"), capsys)
    assert_one_line(rc, err, str(f), "not a directory")
    assert f.read_text() == "x" and created(tmp_path) == ["afile"]
