"""No user file is ever lost or written through (reliability round 3, class 4) and evaluation shares the run lock
(class 6): a run name that is a directory of the user's files, a symlinked run directory, an export beside an
unrelated `X.tmp/`, a report into a directory of the user's, `hmem train --force` while an evaluation reads the
run, and concurrent final.json updates."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from hmem_lit import runs

from .conftest import DEBUG_YAML, tiny_overrides
from .test_bad_input import assert_one_line, run_cli


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hmem_lit.config import load_config
    from hmem_lit.train import train

    out = tmp_path_factory.mktemp("own")
    return train(load_config(DEBUG_YAML, tiny_overrides(out, name="r", **{"train.max_tokens": 4096})))


def test_a_trained_run_directory_carries_the_marker(run):
    assert (run / runs.MARKER).is_file() and runs.owned(run)


@pytest.mark.parametrize("force", [False, True])
def test_a_directory_of_user_files_is_neither_trained_into_nor_deleted(tmp_path, capsys, force):
    user = tmp_path / "runs" / "debug" / "mine"
    user.mkdir(parents=True)
    (user / "thesis.tex").write_text("years of work")
    (user / "data").mkdir()
    (user / "data" / "x.csv").write_text("1,2\n")
    before = _tree(tmp_path)
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs", name="mine", experiment="debug")]
    rc, err = run_cli(argv + (["--force"] if force else []), capsys)
    assert_one_line(rc, err, str(user), "not created by hmem")
    assert _tree(tmp_path) == before


def test_a_symlinked_run_directory_is_refused_and_its_target_untouched(tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / "runs" / "debug").mkdir(parents=True)
    (tmp_path / "runs" / "debug" / "link").symlink_to(target)
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs", name="link", experiment="debug"), "--force"]
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, "symbolic link")
    assert _tree(target) == {"keep.txt": b"keep"}


def test_export_leaves_an_unrelated_tmp_directory_alone(run, tmp_path, capsys):
    pytest.importorskip("transformers")
    other = tmp_path / "hf.tmp"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _ = run_cli(["export", str(run), "--out", str(tmp_path / "hf")], capsys)
    assert rc == 0 and (tmp_path / "hf" / "config.json").is_file()
    assert _tree(other) == {"notes.txt": b"mine"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]  # its own temporary directory is gone


def test_a_report_is_not_written_into_a_directory_of_user_files(run, tmp_path, capsys):
    user = tmp_path / "docs"
    user.mkdir()
    (user / "paper.md").write_text("draft")
    rc, err = run_cli(["report", str(run.parent), "--out", str(user)], capsys)
    assert_one_line(rc, err, "not written by hmem")
    assert _tree(user) == {"paper.md": b"draft"}
    rc, _ = run_cli(["report", str(run.parent), "--out", str(tmp_path / "rep")], capsys)
    assert rc == 0 and (tmp_path / "rep" / ".hmem-report").is_file()
    rc, _ = run_cli(["report", str(run.parent), "--out", str(tmp_path / "rep")], capsys)  # its own: rewritten
    assert rc == 0


def test_training_waits_for_an_evaluation_and_an_evaluation_for_training(run, capsys):
    with runs.run_lock(run, shared=True):  # an evaluation is reading the run
        rc, err = run_cli(
            ["train", str(DEBUG_YAML), *tiny_overrides(run.parents[1], name="r", **{"train.max_tokens": 4096}),
             "--force"],
            capsys,
        )  # fmt: skip
        assert rc == 1 and "being " in err and "\n" not in err
        assert runs.is_complete(run)  # not wiped
        with runs.run_lock(run, shared=True):  # a second evaluation of the same run is fine
            pass
    with runs.run_lock(run):  # training holds it: an evaluation stops with one line
        rc, err = run_cli(["eval", str(run), "--limit", "1"], capsys)
        assert rc == 1 and "being " in err and "\n" not in err


def _update(run_dir: str, k: int) -> None:
    for i in range(25):
        runs.update_final(run_dir, eval={f"p{k}_{i}": {"x": i}})


def test_concurrent_final_json_updates_keep_every_section(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / runs.FINAL).write_text('{"status": "complete", "eval": {}}')
    procs = [mp.get_context("spawn").Process(target=_update, args=(str(d), k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert len(runs.read_final(d)["eval"]) == 50


@pytest.mark.parametrize("damage", [b"[1, 2]", b'{"settings": {"tasks": ["hmem_sk"'])
def test_a_damaged_results_json_is_evaluated_again(run, capsys, damage):
    """An earlier evaluation's marker that is not an object, or is cut off, counts as absent (class 8)."""
    rc, _ = run_cli(["eval", str(run), "--limit", "1", "--tasks", "hmem_sk_base"], capsys)
    marker = run / "eval" / "fetched" / "results.json"
    if not marker.is_file():  # an anchor-only run files it under its mode
        marker = next((run / "eval").glob("*/results.json"))
    marker.write_bytes(damage)
    rc, err = run_cli(["eval", str(run), "--limit", "1", "--tasks", "hmem_sk_base"], capsys)
    assert rc == 0, err
    assert runs.read_json(marker)["settings"]["limit"] == 1
