"""Question sets for evaluation, written by the last preparation stage.

Format: `<data_dir>/questions/<probe>.jsonl`, one JSON object per line:
    entity         str   the probed entity's name (wiki_cloze: the article title)
    kind           str   element | country | synthetic | wiki (also the oracle router's default field)
    prompt         str   text the model continues, without a trailing space ("The atomic number of Carbon is")
    answer         str   the gold continuation without the leading space ("6", "Paris")
    choices        list  multiple-choice probes only: 4 candidate continuations (no leading space)
    label          int   multiple-choice probes only: index of `answer` in `choices`
    mention_count  int   mentions of the entity (name + aliases) in the finished training corpus; null for wiki_cloze
    bucket         int   0..4 frequency bucket in the probe's entity kind (0 = rarest, equal sizes); null: wiki_cloze
    route_text     str   the text to route (the prompt; for wiki_cloze the context, i.e. the prompt too)
Probes (type): atomic_number (generation, exact match of the integer), capital (generation), element_symbol
(multiple choice), country_region (multiple choice), synthetic_city (generation), synthetic_birth_year
(generation), synthetic_employer (multiple choice), wiki_cloze (generation: the last word of a held-out
Wikipedia summary that already occurred earlier in it, so it is answerable from the context alone).
Also `<data_dir>/heldout/wiki_val.jsonl` ({"title", "text"}): held-out Wikipedia summaries, never in training,
for perplexity. `<data_dir>/entity_counts.json` holds every probed entity's count and bucket.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

PROBES = {  # name: (entity kind, type)
    "atomic_number": ("element", "generation"),
    "capital": ("country", "generation"),
    "element_symbol": ("element", "multiple_choice"),
    "country_region": ("country", "multiple_choice"),
    "synthetic_city": ("synthetic", "generation"),
    "synthetic_birth_year": ("synthetic", "generation"),
    "synthetic_employer": ("synthetic", "multiple_choice"),
    "wiki_cloze": ("wiki", "generation"),
    "airport_code": ("airport", "generation"),
    "airport_city": ("airport", "generation"),
    "airport_country": ("airport", "multiple_choice"),
}

_STOP = set(
    "the and for with that this from were which their there about have been into also other than then "
    "they them these those such when where while only some most more many over under after before".split()
)


def _item(
    ent: dict[str, Any], prompt: str, answer: str, choices: list[str] | None = None, label: int | None = None
) -> dict[str, Any]:
    it = {"entity": ent["name"], "kind": ent["kind"], "prompt": prompt, "answer": answer}
    if choices is not None:
        it["choices"], it["label"] = choices, label
    it.update(mention_count=ent["mention_count"], bucket=ent["bucket"], route_text=prompt)
    return it


def _mc(answer: str, pool: list[str], rng: np.random.Generator, n: int = 4) -> tuple[list[str], int]:
    others = sorted({p for p in pool if p != answer})
    pick = [others[i] for i in rng.permutation(len(others))[: n - 1]]
    choices = pick + [answer]
    choices = [choices[i] for i in rng.permutation(len(choices))]
    return choices, choices.index(answer)


def build_questions(entities: list[dict[str, Any]], seed: int) -> dict[str, list[dict[str, Any]]]:
    """entities carry `mention_count` and `bucket` -> {probe: items} (probes with no entities are omitted)."""
    rng = np.random.default_rng([seed, 11])
    by = {k: [e for e in entities if e["kind"] == k] for k in ("element", "country", "synthetic")}
    out: dict[str, list[dict[str, Any]]] = {}
    symbols = [e["attrs"]["symbol"] for e in by["element"]]
    regions = sorted({e["attrs"]["region"] for e in by["country"]})
    orgs = sorted({e["attrs"]["employer"] for e in by["synthetic"]})
    for e in by["element"]:
        a = e["attrs"]
        out.setdefault("atomic_number", []).append(
            _item(e, f"The atomic number of {e['name']} is", str(a["atomic_number"]))
        )
        ch, lab = _mc(a["symbol"], symbols, rng)
        out.setdefault("element_symbol", []).append(
            _item(e, f"The chemical symbol of {e['name']} is", a["symbol"], ch, lab)
        )
    for e in by["country"]:
        a = e["attrs"]
        out.setdefault("capital", []).append(_item(e, f"The capital of {e['name']} is", a["capital"]))
        ch, lab = _mc(a["region"], regions, rng)
        out.setdefault("country_region", []).append(_item(e, f"{e['name']} is a country in", a["region"], ch, lab))
    airports = [e for e in entities if e["kind"] == "airport"]
    countries = sorted({e["attrs"]["country"] for e in airports})
    for e in airports:
        a = e["attrs"]
        out.setdefault("airport_code", []).append(_item(e, f"The IATA code of {e['name']} is", a["iata"]))
        if a["city"].lower() not in e["name"].lower():  # otherwise the answer is in the prompt
            out.setdefault("airport_city", []).append(_item(e, f"{e['name']} serves the city of", a["city"]))
        ch, lab = _mc(a["country"], countries, rng)
        out.setdefault("airport_country", []).append(_item(e, f"{e['name']} is an airport in", a["country"], ch, lab))
    for e in by["synthetic"]:
        a = e["attrs"]
        out.setdefault("synthetic_city", []).append(_item(e, f"{e['name']} was born in the city of", a["city"]))
        out.setdefault("synthetic_birth_year", []).append(
            _item(e, f"{e['name']} was born in the year", str(a["birth_year"]))
        )
        ch, lab = _mc(a["employer"], orgs, rng)
        out.setdefault("synthetic_employer", []).append(_item(e, f"{e['name']} works for", a["employer"], ch, lab))
    return out


def wiki_cloze(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out summaries -> cloze items: the last word (>= 4 letters, not a stop word) that occurred earlier."""
    out = []
    for d in docs:
        text = d["text"]
        matches = list(re.finditer(r"[A-Za-z]{4,}", text))
        for m in reversed(matches[1:]):
            w = m.group(0)
            if w.lower() in _STOP:
                continue
            prefix = text[: m.start()].rstrip()
            if re.search(rf"\b{re.escape(w)}\b", prefix) and len(prefix) > 40:
                out.append(
                    {
                        "entity": d.get("title", ""),
                        "kind": "wiki",
                        "prompt": prefix,
                        "answer": w,
                        "mention_count": None,
                        "bucket": None,
                        "route_text": prefix,
                    }
                )
                break
    return out
