"""Bad input that names a run or an output directory (a probe's findings, session 6): a damaged weights file or
final.json, a run of the wrong corpus, an --out over something that exists, an out_dir that is a file, options that
do not apply. Each is one line on stderr, exit status 2, no traceback, and nothing created or overwritten."""

from __future__ import annotations

import shutil

import pytest

from hmem_lit import runs

from .conftest import DEBUG_YAML, tiny_overrides
from .test_bad_input import assert_one_line, created, run_cli

MEM = {"memory.type": "ffn", "memory.levels": "[4,2]", "retriever.depth": 2, "retriever.branching": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy-corpus anchor run and memory run, and damaged copies of the memory run."""
    from hmem_lit.config import load_config
    from hmem_lit.train import train

    out = tmp_path_factory.mktemp("bad_runs")
    anc = train(load_config(DEBUG_YAML, tiny_overrides(out, name="anc", **{"train.max_tokens": 8192})))
    mem = train(load_config(DEBUG_YAML, tiny_overrides(out, name="mem", **MEM, **{"train.max_tokens": 8192})))
    damaged = {}
    for what, name in (("weights", runs.WEIGHTS), ("final", runs.FINAL)):
        d = out / "damaged" / what
        shutil.copytree(mem, d)
        f = d / name
        f.write_bytes(f.read_bytes()[:100])  # truncated
        damaged[what] = d
    return {"anc": anc, "mem": mem, "out": out, **damaged}


def _unchanged(root, argv, capsys, *needles):
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, *needles)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing created or rewritten


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{d}", "--limit", "2"],
        ["export", "{d}", "--out", "{tmp}/exported"],
        ["edit", "{d}", "--n", "1", "--steps", "1"],
        ["attribute", "{d}", "--per-bucket", "1"],
    ],
    ids=["eval", "export", "edit", "attribute"],
)
@pytest.mark.parametrize("what", ["weights", "final"])
def test_a_damaged_run_file_is_one_line_naming_it(trained, capsys, tmp_path, argv, what):
    d = trained[what]
    name = runs.WEIGHTS if what == "weights" else runs.FINAL
    _unchanged(d, [a.format(d=d, tmp=tmp_path) for a in argv], capsys, name, "corrupt")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("verb", ["edit", "attribute"])
def test_edit_and_attribute_of_a_toy_corpus_run_are_one_line(trained, capsys, verb):
    extra = ["--n", "1", "--steps", "1"] if verb == "edit" else ["--per-bucket", "1"]
    _unchanged(trained["mem"], [verb, str(trained["mem"]), *extra], capsys, "data.source=toy", "data.source=builtin")


def test_negative_threads_are_refused(trained, capsys):
    _unchanged(trained["mem"], ["edit", str(trained["mem"]), "--threads", "-1"], capsys, "--threads")
    _unchanged(trained["mem"], ["attribute", str(trained["mem"]), "--threads", "-2"], capsys, "--threads")


def test_merge_never_writes_over_a_trained_run(trained, capsys):
    _unchanged(
        trained["out"],
        ["merge", str(trained["mem"]), str(trained["anc"]), "--out", str(trained["mem"])],
        capsys,
        "--out",
        "not empty",
    )


@pytest.mark.parametrize("verb", ["export", "merge", "report"])
def test_an_out_that_is_a_file_is_one_line(trained, capsys, tmp_path, verb):
    f = tmp_path / "a.txt"
    f.write_text("mine\n")
    argv = {
        "export": ["export", str(trained["mem"]), "--out", str(f)],
        "merge": ["merge", str(trained["mem"]), str(trained["anc"]), "--out", str(f)],
        "report": ["report", str(trained["out"]), "--out", str(f)],
    }[verb]
    _unchanged(tmp_path, argv, capsys, "--out", "is a file")
    assert f.read_text() == "mine\n"


def test_eval_options_that_do_not_apply_leave_no_eval_directory(trained, capsys):
    d = trained["mem"]
    _unchanged(d, ["eval", str(d), "--block-level", "2", "--limit", "2"], capsys, "--block-level", "blocked")
    _unchanged(d, ["eval", str(d), "--tasks", "nosuchtask", "--limit", "2"], capsys, "nosuchtask")
    assert not (d / "eval").exists()  # the task files it generated first are gone again


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["name=.."], ["name", ".."]),
        (["experiment=."], ["experiment"]),
    ],
)
def test_a_run_name_that_is_not_one_directory_is_refused(tmp_path, capsys, overrides, needles):
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), *overrides], capsys)
    assert_one_line(rc, err, *needles)
    assert created(tmp_path) == []


def test_an_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(f)], capsys)
    assert_one_line(rc, err, "out_dir", "is a file")
    assert created(tmp_path) == ["file"]


def test_an_empty_experiment_file_and_a_directory_are_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    rc, err = run_cli(["train", str(empty), f"out_dir={tmp_path / 'runs'}"], capsys)
    assert_one_line(rc, err, "empty.yaml", "no settings")
    rc, err = run_cli(["info", str(tmp_path)], capsys)
    assert_one_line(rc, err, "a directory, not an experiment file")
    assert created(tmp_path) == ["empty.yaml"]


@pytest.mark.parametrize("scale", ["nan", "inf"])
def test_quickstart_scale_must_be_finite(tmp_path, capsys, scale, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli(["quickstart", "--scale", scale], capsys)
    assert_one_line(rc, err, "--scale")
    assert created(tmp_path) == []


def test_bench_with_an_unknown_name_writes_nothing():
    import subprocess
    import sys

    from .conftest import ROOT

    all_json = ROOT / "benchmarks" / "results" / "all.json"
    before = all_json.stat().st_mtime_ns if all_json.exists() else None
    for only in (["nosuch"], []):
        r = subprocess.run(
            [sys.executable, "-m", "benchmarks.run_all", "--only", *only], cwd=ROOT, capture_output=True, text=True
        )
        assert r.returncode == 2 and "known:" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (all_json.stat().st_mtime_ns if all_json.exists() else None) == before


def test_relaunching_a_run_with_a_damaged_final_json_is_one_line(trained, capsys, tmp_path):
    """It used to print "complete" and exit 0: a sweep or the quickstart then read the damaged file later."""
    mem = trained["mem"]
    d = tmp_path / mem.parent.name / mem.name
    shutil.copytree(mem, d)
    (d / runs.FINAL).write_bytes((mem / runs.FINAL).read_bytes()[:100])
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(tmp_path, name="mem", **MEM, **{"train.max_tokens": 8192})]
    _unchanged(tmp_path, argv, capsys, runs.FINAL, "corrupt")


@pytest.mark.parametrize("args", ["run_dir={tmp}/nope,memory=fetched", "run_dir={mem},memory=bogus"])
def test_the_lm_eval_wrapper_says_bad_model_args_in_one_line(trained, tmp_path, capsys, monkeypatch, args):
    """hmem-lm-eval with a bad run_dir= or memory=: one line and exit 2 (class 8), not lm-eval's traceback."""
    from hmem_lit.evaluation import lm_eval_cli

    (tmp_path / "t.yaml").write_text(
        "task: tiny_t\ndataset_path: json\ndataset_kwargs: {data_files: {test: " + str(tmp_path / "d.jsonl") + "}}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n"
    )
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    model_args = args.format(tmp=tmp_path, mem=trained["mem"])
    argv = ["hmem-lm-eval", "run", "--model", "hmem", "--model_args", model_args, "--tasks", "tiny_t"]
    monkeypatch.setattr("sys.argv", [*argv, "--include_path", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        lm_eval_cli.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.startswith("hmem-lm-eval: error: ") and "Traceback" not in err
