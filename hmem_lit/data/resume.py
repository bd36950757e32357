"""Chunk-granular resume for the chunked outputs of `hmem data prepare` (the embedding matrix, the flat token file
and its lengths, each packed split's rows).

Such an output is written as an ordered sequence of chunks into `.<name>.partial` beside its final path. After a
chunk's bytes are written and flushed, `.<name>.progress.json` records (atomically) how many chunks are complete,
the byte size of every file they fill, and the key of what is being written (the stage key and the chunk size).
A rerun after a kill opens the log again: with the same key and files at least as long as recorded, it cuts the
files back to the recorded sizes (the chunk being written when the process died is dropped, so a partial chunk
never passes for complete) and reports how many chunks to skip; anything else starts afresh. `commit` fsyncs and
renames the files to their final names, then deletes the record. The record survives a killed process (the page
cache keeps flushed writes), not a power cut: that only costs a redo, since a short file is never reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hmem_lit import faults
from hmem_lit.utils import atomic_write_text


def _partial(p: Path) -> Path:
    return p.with_name(f".{p.name}.partial")


class ChunkLog:
    """Append-only chunked files with a resumable progress record. `finals`: the files' final paths (one record for
    all: a chunk is complete when its bytes are in every file); `headers`: bytes each file starts with."""

    def __init__(self, finals: list[Path], key: str, headers: list[bytes] | None = None):
        self.finals = [Path(p) for p in finals]
        self.partials = [_partial(p) for p in self.finals]
        self.record = self.finals[0].with_name(f".{self.finals[0].name}.progress.json")
        self.key = key
        self.headers = headers or [b""] * len(self.finals)
        self.chunks = 0
        self.sizes = [len(h) for h in self.headers]
        self._files: list[Any] = []

    def open(self) -> int:
        """Open for appending -> the number of complete chunks found (0 when starting afresh)."""
        rec = self._read()
        ok = (
            rec is not None
            and rec.get("key") == self.key
            and len(rec.get("sizes", [])) == len(self.partials)
            and all(
                p.is_file() and p.stat().st_size >= s >= len(h)
                for p, s, h in zip(self.partials, rec["sizes"], self.headers)
            )
            and all(_starts_with(p, h) for p, h in zip(self.partials, self.headers))
        )
        self.finals[0].parent.mkdir(parents=True, exist_ok=True)
        if ok:
            assert rec is not None
            self.chunks, self.sizes = int(rec["chunks"]), [int(s) for s in rec["sizes"]]
            self._files = []
            for p, s in zip(self.partials, self.sizes):
                f = open(p, "r+b")
                f.truncate(s)  # bytes past the record: a chunk that was being written
                f.seek(s)
                self._files.append(f)
        else:
            self.record.unlink(missing_ok=True)
            self.chunks, self.sizes = 0, [len(h) for h in self.headers]
            self._files = [open(p, "wb") for p in self.partials]
            for f, h in zip(self._files, self.headers):
                f.write(h)
        return self.chunks

    def append(self, *parts: bytes) -> None:
        """One chunk: its bytes for every file, then the record."""
        for f, b in zip(self._files, parts, strict=True):
            f.write(b)
            f.flush()
        self.sizes = [s + len(b) for s, b in zip(self.sizes, parts)]
        self.chunks += 1
        faults.point("prepare.chunk_unrecorded")  # written, not yet recorded: a rerun must drop it
        atomic_write_text(self.record, json.dumps({"key": self.key, "chunks": self.chunks, "sizes": self.sizes}))

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def commit(self, rename: bool = True) -> None:
        """fsync and (rename=True) move the files to their final names; the record goes last. rename=False keeps
        the partial files and the record (a complete log that a later stage reads and then `discard`s)."""
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
        self.close()
        if rename:
            for p, final in zip(self.partials, self.finals):
                os.replace(p, final)
            self.record.unlink(missing_ok=True)

    def discard(self) -> None:
        self.close()
        for p in self.partials:
            p.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _starts_with(p: Path, head: bytes) -> bool:
    if not head:
        return True
    with open(p, "rb") as f:
        return f.read(len(head)) == head
