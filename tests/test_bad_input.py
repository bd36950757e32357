"""Bad input through the CLI entry point, in-process: exit status 2, one line on stderr naming the key (or file)
and the fix, no traceback, and nothing created (no run directory, no data directory)."""

from __future__ import annotations

import json

import pytest
import torch

from hmem_lit.cli import main

from .conftest import DEBUG_YAML, tiny_overrides


def created(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("hmem: error: "), err
    for n in needles:
        assert n in err, (n, err)


TRAIN_CASES = [  # (overrides, words the one line must hold); issue 19 cases 7-12, 14
    (["optim.lr=inf"], ["optim.lr", "finite"]),
    (["optim.lr=nan"], ["optim.lr"]),
    (["train.accelerator=tpu9"], ["train.accelerator", "tpu9"]),
    (["train.devices=0"], ["train.devices"]),
    (["train.strategy=bogus"], ["train.strategy", "bogus"]),
    (["data.num_workers=-1"], ["data.num_workers"]),
    (
        ["memory.type=ffn", "memory.levels=[8]", "train.mode=frozen", "train.init_from=/nonexistent/run"],
        ["train.init_from", "/nonexistent/run"],
    ),
    (["memory.type=ffn", "memory.levels=[8]", "train.subtree=1"], ["train.subtree", "train.mode=frozen"]),
    (["data.toy_docs=0"], ["data.toy_docs"]),
    (["data.toy_docs=-4"], ["data.toy_docs"]),
    (["memory.levels=[1,"], ["memory.levels", "[1,"]),
    (["anchor.d_model=" + "9" * 30], ["anchor.d_model", "out of range"]),
    (["train=5"], ["train:", "section"]),
    (["memory.pkm=3"], ["memory.pkm:", "section"]),
]


@pytest.mark.parametrize("overrides,needles", TRAIN_CASES, ids=[c[0][-1] for c in TRAIN_CASES])
def test_bad_train_config_is_one_line_and_creates_nothing(tmp_path, capsys, overrides, needles):
    out = tmp_path / "out"
    out.mkdir()
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(out / "runs"), *overrides], capsys)
    assert_one_line(rc, err, *needles)
    assert created(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_gpu(tmp_path, capsys):
    rc, err = run_cli(["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), "train.accelerator=gpu"], capsys)
    assert_one_line(rc, err, "train.accelerator", "gpu")
    assert not (tmp_path / "runs").exists()


def test_data_paths_are_checked_before_anything_is_created(tmp_path, capsys):
    """data.dir that is a file; a data.files entry that is missing or a directory: errors naming the path."""
    good = tmp_path / "a.txt"
    good.write_text("one document\n\nanother document\n")
    afile = tmp_path / "afile"
    afile.write_text("")
    base = ["data.source=files", f"out_dir={tmp_path / 'runs'}"]
    cases = [
        ([f"data.files=[{good}]", f"data.dir={afile}"], ["data.dir", str(afile), "is a file"]),
        (
            [f"data.files=[{good},{tmp_path / 'typo.txt'}]", f"data.dir={tmp_path / 'd'}"],
            ["data.files", "typo.txt", "not found"],
        ),
        ([f"data.files=[{good},{tmp_path}]", f"data.dir={tmp_path / 'd'}"], ["data.files", "is a directory"]),
    ]
    for ov, needles in cases:
        for verb in (["train", str(DEBUG_YAML)], ["data", "prepare", str(DEBUG_YAML)]):
            rc, err = run_cli([*verb, *base, *ov], capsys)
            assert_one_line(rc, err, *needles)
            assert created(tmp_path) == ["a.txt", "afile"], verb


def test_one_document_corpus_says_no_validation_documents(tmp_path, capsys):
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps({"text": "the quick brown fox jumps over the lazy dog " * 100}) + "\n")
    rc, err = run_cli(
        [
            "train",
            str(DEBUG_YAML),
            *tiny_overrides(tmp_path / "runs"),
            "data.source=files",
            f"data.files=[{f}]",
            f"data.dir={tmp_path / 'd'}",
            "data.vocab_size=300",
            "retriever.branching=2",
            "retriever.depth=1",
        ],
        capsys,
    )
    assert rc == 2 and "Traceback" not in err
    assert "no validation documents" in err.splitlines()[-1] and "data.val_fraction" in err.splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # the data directory is prepared; no run directory


def test_base_cycle_names_the_cycle(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: x\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: y\n")
    rc, err = run_cli(["info", str(tmp_path / "a.yaml")], capsys)
    assert_one_line(rc, err, "cycle", "a.yaml -> b.yaml -> a.yaml")


def test_report_on_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    rc, err = run_cli(["report", str(missing)], capsys)
    assert_one_line(rc, err, str(missing))
    assert "//" not in err and f"{missing}.yaml" not in err
    assert not (tmp_path / "no").exists()
