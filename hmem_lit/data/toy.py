"""A tiny generated corpus with a byte-level tokenizer, for tests and smoke runs (no preparation step).

Documents state facts about invented entities grouped by topic; each document's tree path is derived from its
topic and entity, so memory runs can be exercised on it too.
"""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    """Bytes 0..255, then EOT and PAD. The same interface as the BPE tokenizer wrapper."""

    eot_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


_TOPICS = ["river", "mountain", "city", "painter", "planet", "composer", "island", "bird"]
_ATTRS = ["colour", "founder", "age", "number", "home", "friend"]
_VALUES = ["red", "blue", "green", "Ada", "Bo", "Cy", "seven", "nine", "north", "south", "Eli", "Flo"]


def toy_documents(n_docs: int, seed: int) -> list[tuple[str, int, int]]:
    """-> [(text, topic, entity)]: deterministic for a seed."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        topic = int(rng.integers(len(_TOPICS)))
        ent = int(rng.zipf(1.5) % 50)
        facts = []
        for a in range(len(_ATTRS)):  # an entity's facts are fixed by (topic, entity): learnable
            v = _VALUES[(topic * 7 + ent * 3 + a * 5) % len(_VALUES)]
            facts.append(f"The {_ATTRS[a]} of {_TOPICS[topic]} {ent} is {v}.")
        order = rng.permutation(len(facts))[: int(rng.integers(2, len(facts) + 1))]
        docs.append((" ".join(facts[i] for i in order), topic, ent))
    return docs


def toy_packed(n_docs: int, seq_len: int, seed: int, branching: int, depth: int):
    """Pack toy documents (grouped by path) into (N, seq_len+1) token rows and (N, depth) paths."""
    tok = ByteTokenizer()
    groups: dict[tuple[int, ...], list[int]] = {}
    for text, topic, ent in toy_documents(n_docs, seed):
        path, node = [], 0
        for lvl in range(depth):  # level 1 from the topic, deeper levels from the entity
            child = topic % branching if lvl == 0 else (ent // branching ** (lvl - 1)) % branching
            node = node * branching + child
            path.append(node)
        groups.setdefault(tuple(path), []).extend(tok.encode(text) + [tok.eot_id])
    rows, paths = [], []
    width = seq_len + 1
    for key, stream in sorted(groups.items()):
        for i in range(0, len(stream), width):
            chunk = stream[i : i + width]
            chunk = chunk + [tok.pad_id] * (width - len(chunk))
            rows.append(chunk)
            paths.append(key)
    return np.asarray(rows, dtype=np.int32), np.asarray(paths, dtype=np.int64), tok
