"""data.files reads the formats a researcher already has: Parquet, gzip / zstd-compressed JSONL and a saved Hugging
Face `datasets` directory, with the JSONL rules (a "text" field, other scalar fields kept as metadata, so
data.key_field reads them) and the same documents as the JSONL they hold; a damaged file is one line naming it,
exit status 2, and no data directory left behind (through the `hmem` entry point)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hmem_lit.config import load_config
from hmem_lit.data.prepare import prepare

HMEM = str(Path(sys.executable).parent / "hmem")
ROWS = [
    {"text": f"Entity {i % 9} was founded in year {1900 + i}. It makes item {i % 5}.", "entity": f"e{i % 9}"}
    for i in range(80)
] + [{"text": "Background text without an entity, long enough to count.", "entity": None}]
BAD = [{"title": "no text"}, {"text": "   ", "entity": "e1"}]  # skipped and counted, as in JSONL


def _overrides(files: list[Path], out: Path) -> list[str]:
    return [
        "data.source=files",
        f"data.files=[{','.join(map(str, files))}]",
        f"data.dir={out}",
        "data.key_field=entity",
        "data.vocab_size=300",
        "data.seq_len=32",
        "retriever.branching=2",
        "retriever.depth=2",
        "retriever.embed_dim=16",
    ]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _write(kind: str, tmp_path: Path, rows: list[dict]) -> Path:
    if kind == "jsonl.gz":
        p = tmp_path / "corpus.jsonl.gz"
        p.write_bytes(gzip.compress(_jsonl(rows)))
    elif kind == "jsonl.zst":
        zstandard = pytest.importorskip("zstandard")
        p = tmp_path / "corpus.jsonl.zst"
        p.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(rows)))
    elif kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        p = tmp_path / "corpus.parquet"
        cols = {k: [r.get(k) for r in rows] for k in ("text", "entity", "title")}
        pq.write_table(pa.table(cols), p, row_group_size=16)
    else:
        datasets = pytest.importorskip("datasets")
        p = tmp_path / "corpus_hf"
        cols = {k: [r.get(k) for r in rows] for k in ("text", "entity", "title")}
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(cols)}).save_to_disk(str(p))
    return p


def _docs(d: Path) -> list[dict]:
    return [json.loads(x) for x in open(d / "corpus" / "docs.jsonl", encoding="utf-8")]


@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "parquet", "hf"])
def test_format_prepares_like_plain_jsonl(tmp_path, kind):
    rows = ROWS[:40] + BAD + ROWS[40:]
    plain = tmp_path / "corpus.jsonl"
    plain.write_bytes(_jsonl(rows))
    ref = prepare(load_config(None, _overrides([plain], tmp_path / "ref")), progress=False, verbose=False)
    got = prepare(load_config(None, _overrides([_write(kind, tmp_path, rows)], tmp_path / kind)), False, False, False)
    strip = lambda ds: [{k: v for k, v in d.items() if k not in ("source", "title")} for d in ds]  # noqa: E731
    assert strip(_docs(got)) == strip(_docs(ref)) and len(_docs(got)) == len(ROWS)
    assert {d["entity"] for d in _docs(got)} == {f"e{i}" for i in range(9)} | {None}  # the key field kept
    stats = json.loads((got / "stats.json").read_text())
    assert stats["skipped_lines"] == 2 and stats["documents"] == len(ROWS)
    for stage in ("tree", "packing", "questions"):
        assert (got / "manifest.json").is_file() and stage in json.loads((got / "manifest.json").read_text())["stages"]


def _damage(kind: str, p: Path) -> None:
    if kind == "hf":
        (next(p.rglob("*.arrow"))).write_bytes(b"not arrow at all")
    else:
        data = p.read_bytes()  # a download cut off half way (a Parquet file without its footer)
        p.write_bytes(data[: len(data) // 2] if kind != "parquet" else b"PAR1" + data[20:60])


@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "parquet", "hf"])
def test_damaged_file_is_one_line_and_exit_2(tmp_path, kind):
    p = _write(kind, tmp_path, ROWS)
    _damage(kind, p)
    out = tmp_path / "data_out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run(
        [HMEM, "data", "prepare", *_overrides([p], out)], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and str(p) in lines[0] and "not a readable" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()


def test_parquet_without_text_column_names_the_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from hmem_lit.config import ConfigError

    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["a b c"], "entity": ["x"]}), p)
    with pytest.raises(ConfigError, match='no "text" column.*body, entity'):
        prepare(load_config(None, _overrides([p], tmp_path / "o")), progress=False, verbose=False)
    assert not (tmp_path / "o").exists()
