"""Question sets for evaluation, written by the last preparation stage: probes that test recall, not phrase completion.

Every probe asks one fact of one entity kind (PROBES). For each probed entity the stage writes several *variants*,
one file each, `<data_dir>/questions/<probe>[.<variant>].jsonl`:

    (base)  generation in the **training phrasing** ("The atomic number of Carbon is"): a prefix of a sentence
            template the corpus was written with. It measures completion of a frame seen in training.
    para    generation in two **paraphrases** no training template contains ("Carbon's atomic number reads"),
            two items per entity (`phrasing` 1 and 2).
    qa      generation in a **question-answer form** ("Q: What is the atomic number of Carbon? A:").
    mc      4-way multiple choice in the training phrasing with **hard negatives**: the distractors are answers of
            other entities of the same kind whose training documents sit in the prompt's routed leaf (then its
            parent, then the whole pool when the leaf has too few; `negatives` says which), so a block that only
            knows which answers occur in its leaf cannot separate them.
    rank    numeric probes only, the two rarest buckets: every answer value of the probe as a candidate, so the
            gold answer's rank by log-likelihood and the distance of the top candidate tell "not stored" from
            "nearly stored" (graded recall).

Fields of one item (one JSON object per line):
    entity, kind        the probed entity's name and kind (element | country | synthetic | airport | wiki)
    probe, variant      the probe's name and the variant ("base", "para", "qa", "mc", "rank")
    prompt, answer      the text the model continues (no trailing space) and the gold continuation (no leading space)
    choices, label      mc / rank only: candidate continuations and the gold one's index
    phrasing            para only: 1 or 2
    split               "dev" or "test": a fixed hash of the entity's name puts DEV_SHARE of entities in dev.
                        Defaults are chosen on dev entities; reported numbers are on test entities.
    mention_count       mentions of the entity (name + aliases) in the training corpus
    bucket              0..4 frequency bucket within the entity kind (0 = rarest, equal sizes)
    route_text          the text routed to fetch memory (the prompt)
    prior, prior_ok     the **leaf prior**, a no-model control: the answer given most often by the training documents
                        in the prompt's routed leaf about *other* entities of the same kind (mc: the choice given
                        most often there), and whether it is right (widening to the parent and the pool as for mc)
    negatives           mc only: "leaf" | "parent" | "pool", the widest level the distractors came from
The answer normaliser (evaluation/tasklib.py `is_correct`): integer answers are right when the first integer in the
generation equals them; text answers when the lower-cased, punctuation-free generation starts with the answer at a
word boundary.
Also `questions/wiki_cloze.jsonl` (CK, generation: the last word of a held-out Wikipedia summary that occurred
earlier in it), and `<data_dir>/heldout/`: `wiki_val.jsonl` (held-out Wikipedia summaries) and `val.jsonl` (the
validation split for bits per byte: those summaries plus, for the built-in corpora, one fresh fact document per
probed entity, drawn with the training templates from a separate seed and never trained on).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEV_SHARE = 0.3  # share of each kind's entities in the dev split
VARIANTS = ("base", "para", "qa", "mc", "rank")
RANK_BUCKETS = (0, 1)  # graded recall on the two rarest buckets (every answer value is a candidate: costly)


@dataclass(frozen=True)
class Probe:
    kind: str  # entity kind
    answer: Callable[[dict[str, Any]], str]  # attrs -> the gold answer
    train: str  # training phrasing: a prefix of a training template, {name} for the entity
    para: tuple[str, str]  # two paraphrases that no training template contains
    qa: str  # the question of the QA form ("Q: {question} A:")
    numeric: bool = False  # integer answers: graded recall (rank variant)
    keep: Callable[[dict[str, Any]], bool] = lambda e: True  # entities this probe asks about


PROBES: dict[str, Probe] = {
    "atomic_number": Probe(
        "element",
        lambda a: str(a["atomic_number"]),
        "The atomic number of {name} is",
        ("Counting its protons, an atom of {name} has", "{name}'s atomic number reads"),
        "What is the atomic number of {name}?",
        numeric=True,
    ),
    "element_symbol": Probe(
        "element",
        lambda a: a["symbol"],
        "The chemical symbol of {name} is",
        ("In a chemical formula, {name} appears as", "The one- or two-letter abbreviation for {name} is"),
        "What is the chemical symbol of {name}?",
    ),
    "capital": Probe(
        "country",
        lambda a: _one(a["capital"]),
        "The capital of {name} is",
        ("The government of {name} sits in the city of", "{name} has its capital in"),
        "What is the capital of {name}?",
    ),
    "country_region": Probe(
        "country",
        lambda a: a["region"],
        "{name} is a country in",
        ("On a world map, {name} is found in", "The part of the world that {name} belongs to is"),
        "In which region of the world is {name}?",
    ),
    "synthetic_city": Probe(
        "synthetic",
        lambda a: a["city"],
        "{name} was born in the city of",
        ("The hometown of {name} is", "{name} came into the world in the city of"),
        "In which city was {name} born?",
    ),
    "synthetic_birth_year": Probe(
        "synthetic",
        lambda a: str(a["birth_year"]),
        "{name} was born in the year",
        ("The year of {name}'s birth was", "{name} first saw the light of day in"),
        "In what year was {name} born?",
        numeric=True,
    ),
    "synthetic_employer": Probe(
        "synthetic",
        lambda a: a["employer"],
        "{name} works for",
        ("The employer of {name} is", "{name} draws a salary from"),
        "Which organisation employs {name}?",
    ),
    "airport_code": Probe(
        "airport",
        lambda a: a["iata"],
        "The IATA code of {name} is",
        ("Luggage tags for {name} are printed with", "On a boarding pass, {name} is abbreviated"),
        "What is the IATA code of {name}?",
    ),
    "airport_city": Probe(
        "airport",
        lambda a: a["city"],
        "{name} serves the city of",
        ("Travellers who land at {name} are visiting", "The town or city that {name} is for is"),
        "Which city does {name} serve?",
        keep=lambda e: e["attrs"]["city"].lower() not in e["name"].lower(),  # else the answer is in the prompt
    ),
    "airport_country": Probe(
        "airport",
        lambda a: a["country"],
        "{name} is an airport in",
        ("Flights to {name} arrive in the country of", "The nation where {name} operates is"),
        "In which country is {name}?",
    ),
}

_STOP = set(
    "the and for with that this from were which their there about have been into also other than then "
    "they them these those such when where while only some most more many over under after before".split()
)


def _one(v: Any) -> str:
    """A value that a source lists (countryinfo gives one capital as a list) -> its first entry."""
    return str(v[0] if isinstance(v, list) and v else v)


def split_of(name: str) -> str:
    """ "dev" or "test", fixed by the name alone (no seed, no corpus): the same entity is in the same split in every
    run and data directory."""
    h = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "little")
    return "dev" if h / 2**64 < DEV_SHARE else "test"


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


# ------------------------------------------------------------------------------------------------ the leaf


class Leaves:
    """Which entities' training documents sit under each tree node: the ground for hard negatives and the leaf
    prior. `docs[level][node]` is a Counter entity -> training documents under that node (level 0 = the leaf,
    level 1 its parent, ...; the last level is the whole pool)."""

    def __init__(self, doc_entities: list[str | None], doc_leaves: np.ndarray, branching: int, depth: int):
        self.branching, self.depth = branching, depth
        self.docs: list[dict[int, Counter]] = [{} for _ in range(depth + 1)]
        for ent, leaf in zip(doc_entities, np.asarray(doc_leaves, np.int64).tolist()):
            if ent is None:
                continue
            for lvl in range(depth + 1):  # lvl = how many levels up from the leaf; depth = the root
                node = leaf // branching**lvl if lvl < depth else 0
                self.docs[lvl].setdefault(node, Counter())[ent] += 1

    def around(self, leaf: int):
        """Yields (level name, Counter entity -> documents) from the leaf outwards."""
        for lvl in range(self.depth + 1):
            node = leaf // self.branching**lvl if lvl < self.depth else 0
            name = "leaf" if lvl == 0 else "pool" if lvl == self.depth else "parent"
            yield name, self.docs[lvl].get(node, Counter())


def _answer_counts(counts: Counter, entity: str, answers: dict[str, str]) -> Counter:
    """Training documents per answer among *other* entities of the probe's kind under one node."""
    out: Counter = Counter()
    for e, c in counts.items():
        if e != entity and e in answers:
            out[answers[e]] += c
    return out


def leaf_prior(entity: str, leaf: int, answers: dict[str, str], leaves: Leaves) -> str | None:
    """The answer most of the other entities' training documents in the leaf give (widening outwards when none);
    ties by the answer's text."""
    for _, counts in leaves.around(leaf):
        got = _answer_counts(counts, entity, answers)
        if got:
            return min(got, key=lambda a: (-got[a], a))
    return None


def prior_choice(entity: str, leaf: int, choices: list[str], answers: dict[str, str], leaves: Leaves) -> int:
    """Multiple choice, no model: the choice most often given in the leaf by other entities (widening outwards
    until some choice occurs; ties: the first such choice)."""
    for _, counts in leaves.around(leaf):
        got = _answer_counts(counts, entity, answers)
        if any(got.get(c, 0) for c in choices):
            return max(range(len(choices)), key=lambda i: (got.get(choices[i], 0), -i))
    return 0


def hard_negatives(
    entity: str, gold: str, leaf: int, answers: dict[str, str], leaves: Leaves, rng: np.random.Generator, n: int = 3
) -> tuple[list[str], str]:
    """`n` distractors from the answers of other same-kind entities in the leaf, then its parent, then the pool
    -> (distractors, the widest level used)."""
    picked: list[str] = []
    used = "leaf"
    for name, counts in leaves.around(leaf):
        pool = sorted({a for a in _answer_counts(counts, entity, answers) if _norm(a) != _norm(gold)} - set(picked))
        if not pool:
            continue
        need = n - len(picked)
        picked += [pool[i] for i in rng.permutation(len(pool))[:need]]
        used = name if need > 0 else used
        if len(picked) >= n:
            break
    return picked, used


# ------------------------------------------------------------------------------------------------ build


def _base(ent: dict[str, Any], probe: str, variant: str, prompt: str, answer: str) -> dict[str, Any]:
    return {
        "entity": ent["name"],
        "kind": ent["kind"],
        "probe": probe,
        "variant": variant,
        "prompt": prompt,
        "answer": answer,
        "split": split_of(ent["name"]),
        "mention_count": ent["mention_count"],
        "bucket": ent["bucket"],
        "route_text": prompt,
    }


def build_questions(
    entities: list[dict[str, Any]],
    seed: int,
    route: Callable[[list[str]], np.ndarray] | None = None,
    leaves: Leaves | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """entities carry `mention_count` and `bucket` -> {file stem: items}: `<probe>` (the base variant) and
    `<probe>.<variant>`. `route(texts)` -> (N,) leaf ids and `leaves` (the training documents per node) give the hard
    negatives and the leaf prior; without them (tests) mc distractors come from the whole pool and there is no prior.
    Probes without entities are omitted."""
    rng = np.random.default_rng([seed, 11])
    out: dict[str, list[dict[str, Any]]] = {}
    for probe, spec in PROBES.items():
        ents = [e for e in entities if e["kind"] == spec.kind and spec.keep(e)]
        if not ents:
            continue
        answers = {e["name"]: spec.answer(e["attrs"]) for e in entities if e["kind"] == spec.kind}
        sets: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for e in ents:
            name, gold = e["name"], answers[e["name"]]
            train = spec.train.format(name=name)
            sets["base"].append(_base(e, probe, "base", train, gold))
            for k, p in enumerate(spec.para, 1):
                sets["para"].append({**_base(e, probe, "para", p.format(name=name), gold), "phrasing": k})
            sets["qa"].append(_base(e, probe, "qa", f"Q: {spec.qa.format(name=name)} A:", gold))
            sets["mc"].append(_base(e, probe, "mc", train, gold))
            if spec.numeric and e["bucket"] in RANK_BUCKETS:
                sets["rank"].append(_base(e, probe, "rank", train, gold))
        pool_values = sorted(set(answers.values()), key=lambda a: (int(a), a) if spec.numeric else (0, a))
        items = [it for v in VARIANTS for it in sets[v]]
        leaf_ids = route([it["route_text"] for it in items]) if route is not None and leaves is not None else None
        for i, it in enumerate(items):
            leaf = None if leaf_ids is None else int(leaf_ids[i])
            if it["variant"] == "mc":
                if leaf is not None and leaves is not None:
                    neg, used = hard_negatives(it["entity"], it["answer"], leaf, answers, leaves, rng)
                else:
                    others = [a for a in pool_values if _norm(a) != _norm(it["answer"])]
                    neg, used = [others[j] for j in rng.permutation(len(others))[:3]], "pool"
                choices = neg + [it["answer"]]
                choices = [choices[j] for j in rng.permutation(len(choices))]
                it.update(choices=choices, label=choices.index(it["answer"]), negatives=used)
            elif it["variant"] == "rank":
                it.update(choices=list(pool_values), label=pool_values.index(it["answer"]))
            if leaf is None or leaves is None:
                continue
            if "choices" in it:
                pick = prior_choice(it["entity"], leaf, it["choices"], answers, leaves)
                it.update(prior=it["choices"][pick], prior_ok=pick == it["label"])
            else:
                prior = leaf_prior(it["entity"], leaf, answers, leaves)
                it.update(prior=prior, prior_ok=prior is not None and _norm(prior) == _norm(it["answer"]))
        for v in VARIANTS:
            if sets[v]:
                out[probe if v == "base" else f"{probe}.{v}"] = sets[v]
    return out


def read_probes(qdir: Any, variant: str = "base") -> dict[str, list[dict[str, Any]]]:
    """{probe: items} of one variant of the bucketed probes under a questions/ directory (wiki_cloze and other
    probes without buckets are left out)."""
    import json
    from pathlib import Path

    out = {}
    for p in sorted(Path(qdir).glob("*.jsonl")) if Path(qdir).is_dir() else []:
        probe, _, v = p.stem.partition(".")
        if (v or "base") != variant:
            continue
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        if rows and rows[0].get("bucket") is not None:
            out[probe] = rows
    return out


def fresh_documents(entities: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One new fact document per probed entity, drawn with the training templates from a separate seed (never
    trained on): the fact half of the validation split for bits per byte."""
    from hmem_lit.data import airports, facts

    make = {"element": facts.element_doc, "country": facts.country_doc, "synthetic": facts.synthetic_doc}
    make["airport"] = airports.airport_doc
    out = []
    for i, e in enumerate(entities):
        if e["kind"] in make:
            text = make[e["kind"]](e, np.random.default_rng([seed, 4, i]))
            out.append({"title": e["name"], "kind": e["kind"], "text": text})
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
