"""Checks before work (reliability round 3, class 2) and a corpus with nothing usable (class 1): refused in one line
naming the file and the fix, exit status 2, before any run directory exists, and a data directory this command
was creating is not left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import DEBUG_YAML, tiny_overrides
from .test_bad_input import assert_one_line, created, run_cli

FILES = ["data.source=files", "data.vocab_size=300", "retriever.branching=2", "retriever.depth=1", "data.seq_len=32"]


def _corpus(path, n=60, key=True, lacking=()):
    with open(path, "w") as f:
        for i in range(n):
            doc = {"text": f"document {i} about entity{i % 7} with some words " * 3}
            if key and i not in lacking:
                doc["entity"] = f"entity{i % 7}"
            f.write(json.dumps(doc) + "\n")
    return path


def _train(tmp_path, *extra, data_dir="d"):
    return [
        "train",
        str(DEBUG_YAML),
        *tiny_overrides(tmp_path / "runs"),
        *FILES,
        f"data.dir={tmp_path / data_dir}",
        *extra,
    ]


def test_a_key_field_missing_on_some_documents_is_refused_before_any_stage_is_written(tmp_path, capsys):
    f = _corpus(tmp_path / "c.jsonl", lacking=(3, 17))
    for verb in (_train(tmp_path, f"data.files=[{f}]", "data.key_field=entity", data_dir="data/d"),):
        rc, err = run_cli(verb, capsys)
        assert_one_line(rc, err, "data.key_field='entity'", "2 of 60", "c.jsonl:4")
        assert created(tmp_path) == ["c.jsonl"]  # neither the data directory nor a run directory


@pytest.mark.parametrize("content", ["", "\n\n   \n", "[1, 2]\n", '{"title": "no text"}\n', "\ufffe\xff\x00garbage\n"])
def test_a_corpus_with_nothing_usable_is_one_line_and_leaves_nothing(tmp_path, capsys, content):
    f = tmp_path / "c.jsonl"
    f.write_text(content, encoding="utf-8", errors="surrogateescape") if content else f.write_text("")
    rc, err = run_cli(_train(tmp_path, f"data.files=[{f}]", data_dir="data/d"), capsys)
    assert_one_line(rc, err, "data.files", "no usable document")
    assert created(tmp_path) == ["c.jsonl"]  # not even the data/ parent that data.dir=data/d made


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    f = _corpus(root / "c.jsonl", n=80)
    rc = __import__("hmem_lit.cli", fromlist=["main"]).main(
        ["data", "prepare", str(DEBUG_YAML), *FILES, f"data.files=[{f}]", f"data.dir={root / 'd'}"]
    )
    assert rc == 0
    return root


def _copy(prepared, tmp_path):
    import shutil

    shutil.copytree(prepared / "d", tmp_path / "d")
    return tmp_path / "d", prepared / "c.jsonl"


@pytest.mark.parametrize("damage", ["token", "path", "tokenizer"])
def test_damaged_prepared_data_is_one_line_before_a_run_directory_exists(prepared, tmp_path, capsys, damage):
    d, f = _copy(prepared, tmp_path)
    if damage == "token":
        t = np.load(d / "packed" / "train_tokens.npy")
        t[0, 3] = 1 << 20  # a flipped high bit: an id far past the vocabulary
        np.save(d / "packed" / "train_tokens.npy", t)
        needles = ["train_tokens.npy", "outside the vocabulary"]
    elif damage == "path":
        p = np.load(d / "packed" / "train_paths.npy")
        p[0, 0] = 99
        np.save(d / "packed" / "train_paths.npy", p)
        needles = ["train_paths.npy", "outside the tree"]
    else:
        tj = d / "tokenizer.json"
        tj.write_bytes(tj.read_bytes()[: len(tj.read_bytes()) // 2])
        needles = ["tokenizer.json", "unreadable"]
    rc, err = run_cli(_train(tmp_path, f"data.files=[{f}]"), capsys)
    assert_one_line(rc, err, *needles, "--force")
    assert not (tmp_path / "runs").exists()
