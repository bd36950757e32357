"""Corpus lines of any damage (reliability round 3, class 1): random bytes, deep nesting, integers past Python's
4,300-digit limit, lone surrogates, a byte-order mark, JSON that is not an object or has no text, compressed input
under any name. A damaged line is skipped and counted with its file:line, whatever the damage; the good lines all
come through; nothing raises. A path that is not a regular file is one line before any work."""

from __future__ import annotations

import gzip
import json
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hmem_lit.data import sources  # noqa: E402
from hmem_lit.errors import ConfigError  # noqa: E402

from .conftest import DEBUG_YAML, tiny_overrides  # noqa: E402
from .test_bad_input import assert_one_line, run_cli  # noqa: E402

BAD_LINES = [
    b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nesting past the recursion limit
    b'{"text": "n", "x": ' + b"9" * 5000 + b"}",  # an integer Python will not convert
    b'{"text": "lone \\ud800 surrogate"}',
    b'{"text": 5}',
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"title": "no text"}',
    b'{"text": "   "}',
    b"\xff\xfe\x00 not utf-8",
    b'{"text": "cut off',
]


def _good(i: int) -> bytes:
    return json.dumps({"text": f"good document {i}", "entity": f"e{i}"}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.lists(st.one_of(st.integers(0, len(BAD_LINES) - 1), st.binary(max_size=60), st.none()), max_size=25),
    bom=st.booleans(),
    gz=st.booleans(),
)
@example(layout=[b"(\xb5/\xfd", 0], bom=False, gz=False)  # found by the fuzz: zstd's magic, then a bad frame
@example(layout=[b"\x1f\x8b junk", None], bom=False, gz=False)  # gzip's magic on a plain line
def test_every_damaged_line_is_skipped_and_every_good_one_kept(tmp_path_factory, layout, bom, gz):
    lines, good = [], 0
    for x in layout:
        if x is None:
            lines.append(_good(good))
            good += 1
        elif isinstance(x, int):
            lines.append(BAD_LINES[x])
        else:
            lines.append(x.replace(b"\n", b" ").replace(b"\r", b" "))  # random bytes: one line each
    body = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n"
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "corpus.jsonl"  # compressed or not, the name says .jsonl: the first bytes decide
    path.write_bytes(gzip.compress(body) if gz else body)
    skipped = sources.SkipCounter()
    if not gz and not bom and any(body.startswith(m) for m in sources._MAGIC):
        # random bytes that open with a compression magic number: the file is read as compressed (the first bytes
        # decide), fails, and is one error naming the file, never a traceback
        with pytest.raises(ConfigError, match=f"{path} is not a readable (gzip|zstd) file"):
            list(sources.read_files([str(path)], skipped))
        return
    docs = list(sources.read_files([str(path)], skipped))
    kept = [doc for doc in docs if doc["text"].startswith("good document")]
    assert [doc["entity"] for doc in kept] == [f"e{i}" for i in range(good)]  # all of them, in order
    assert all(ex.split(":")[0] == str(path) for ex in skipped.examples)  # file:line of each skip
    if any(isinstance(x, int) for x in layout):
        assert skipped.total >= 1


def test_a_byte_order_mark_keeps_the_first_document(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + _good(0) + b"\n" + _good(1) + b"\n")
    skipped = sources.SkipCounter()
    assert [d["entity"] for d in sources.read_files([str(p)], skipped)] == ["e0", "e1"] and skipped.total == 0


def test_a_long_document_is_cut_into_pieces(tmp_path):
    p = tmp_path / "long.jsonl"
    words = " ".join(f"w{i}" for i in range(60_000))  # ~350k characters
    p.write_text(json.dumps({"text": words, "entity": "big"}) + "\n")
    docs = list(sources.read_files([str(p)], sources.SkipCounter()))
    assert len(docs) > 1 and all(len(d["text"]) <= sources.MAX_DOC_CHARS for d in docs)
    assert " ".join(d["text"] for d in docs) == words and {d["entity"] for d in docs} == {"big"}


@pytest.mark.parametrize("what", ["fifo", "device"])
def test_a_path_that_is_not_a_regular_file_is_one_line(tmp_path, capsys, what):
    if what == "fifo":
        path = tmp_path / "pipe.jsonl"
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    argv = ["train", str(DEBUG_YAML), *tiny_overrides(tmp_path / "runs"), "data.source=files", f"data.files=[{path}]"]
    rc, err = run_cli([*argv, f"data.dir={tmp_path / 'd'}"], capsys)
    assert_one_line(rc, err, "data.files", "not a regular file")
    assert not (tmp_path / "d").exists() and not (tmp_path / "runs").exists()
