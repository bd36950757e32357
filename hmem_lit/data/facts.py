"""Long-tail fact documents with ground truth: real elements and countries, and a seeded synthetic world.

Every probed entity is a dict {kind, name, aliases, attrs, repeats}: `repeats` fact documents are written about
it, each a few sentences in randomly chosen templates, always stating the probed facts (elements: atomic number
and symbol; countries: capital and region; synthetic people: birth city, birth year and employer) plus a random
subset of the entity's other attributes. How many documents an entity gets follows a long tail:
- real entities: ranked by how often they are mentioned in the Wikipedia training text, then given the
  quantiles of a truncated Zipf law P(r) ~ r**-zipf_a on fact_repeats_min..fact_repeats_max (most mentioned ->
  most documents);
- synthetic people: repeats drawn from the same law (seeded).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ------------------------------------------------------------------------------------------------ the tail law


def zipf_pmf(max_repeats: int, a: float, min_repeats: int = 1) -> np.ndarray:
    """P(r) ~ r**-a for r = min_repeats..max_repeats (entry i is r = min_repeats + i)."""
    r = np.arange(min_repeats, max_repeats + 1, dtype=np.float64)
    p = r**-a
    return p / p.sum()


def repeats_by_rank(counts: list[int], names: list[str], max_repeats: int, a: float, min_repeats: int = 1) -> list[int]:
    """Entities ordered by (count, name): the i-th of n gets the Zipf quantile at (i + 0.5) / n."""
    cdf = np.cumsum(zipf_pmf(max_repeats, a, min_repeats))
    order = sorted(range(len(counts)), key=lambda i: (counts[i], names[i]))
    out = [min_repeats] * len(counts)
    for rank, i in enumerate(order):
        out[i] = int(np.searchsorted(cdf, (rank + 0.5) / len(counts)) + min_repeats)
    return out


# ------------------------------------------------------------------------------------------------ elements

ELEMENT_ALIASES = {
    "Aluminium": ["Aluminum"],
    "Aluminum": ["Aluminium"],
    "Caesium": ["Cesium"],
    "Cesium": ["Caesium"],
    "Sulfur": ["Sulphur"],
}

_EL_NUMBER = [
    "The atomic number of {name} is {z}.",
    "{name} has the atomic number {z}.",
    "{name} is the chemical element with atomic number {z}.",
    "With {z} protons in its nucleus, {name} has atomic number {z}.",
    "In the periodic table, {name} is element number {z}.",
    "The atomic number of the element {name} is {z}.",
]
_EL_SYMBOL = [
    "The chemical symbol of {name} is {sym}.",
    "{name} is written with the symbol {sym}.",
    "Chemists abbreviate {name} as {sym}.",
    "Its symbol is {sym}.",
    "The symbol {sym} stands for {name}.",
]
_EL_OTHER = {
    "discovery": [
        "{name} was discovered by {disc} in {year}.",
        "In {year}, {disc} discovered {name}.",
        "The discovery of {name} is credited to {disc} ({year}).",
    ],
    "ancient": ["{name} has been known since ancient times.", "{name} was known to the ancients."],
    "place": ["It was first identified in {place}.", "The discovery of {name} took place in {place}."],
    "origin": ["The name {name} comes from {origin}", "Origin of the name {name}: {origin}"],
    "table": [
        "{name} sits in period {period} and group {group} of the periodic table.",
        "{name} is a {block}-block element in period {period}.",
    ],
    "series": ["{name} belongs to the {series}.", "{name} is classified among the {series}."],
}
_EL_OPEN = ["{name} is a chemical element.", "Facts about {name}.", "", "", "Element profile: {name}."]


def element_entities(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in elements:
        name = e["name"]
        out.append(
            {
                "kind": "element",
                "name": name,
                "aliases": ELEMENT_ALIASES.get(name, []),
                "attrs": {
                    "atomic_number": int(e["atomic_number"]),
                    "symbol": e["symbol"],
                    "discoverers": e["discoverers"] or "",
                    "discovery_year": e["discovery_year"],
                    "discovery_location": e["discovery_location"] or "",
                    "name_origin": (e["name_origin"] or "").strip(),
                    "block": e["block"] or "",
                    "period": e["period"],
                    "group": e["group_id"],
                    "series": (e["series"] or "").lower(),
                },
            }
        )
    return out


def element_doc(ent: dict[str, Any], rng: np.random.Generator) -> str:
    a, name = ent["attrs"], ent["name"]
    f = dict(
        name=name,
        z=a["atomic_number"],
        sym=a["symbol"],
        disc=a["discoverers"].rstrip("."),
        year=a["discovery_year"],
        place=a["discovery_location"],
        origin=a["name_origin"],
        period=a["period"],
        group=a["group"],
        block=a["block"],
        series=a["series"],
    )
    core = [_pick(_EL_NUMBER, rng), _pick(_EL_SYMBOL, rng)]
    other = []
    if a["discovery_year"] and a["discoverers"]:
        other.append(_pick(_EL_OTHER["discovery"], rng))
    elif "ancient" in a["discoverers"].lower():
        other.append(_pick(_EL_OTHER["ancient"], rng))
    if a["discovery_location"]:
        other.append(_pick(_EL_OTHER["place"], rng))
    if a["name_origin"]:
        other.append(_pick(_EL_OTHER["origin"], rng))
    if a["period"] and a["group"] and a["block"]:
        other.append(_pick(_EL_OTHER["table"], rng))
    if a["series"]:
        other.append(_pick(_EL_OTHER["series"], rng))
    return _compose(_pick(_EL_OPEN, rng), core, other, rng, f)


# ------------------------------------------------------------------------------------------------ countries

LANGUAGES = {
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "ar": "Arabic",
    "de": "German",
    "ru": "Russian",
    "zh": "Chinese",
    "it": "Italian",
    "nl": "Dutch",
    "hi": "Hindi",
    "ja": "Japanese",
    "ko": "Korean",
    "tr": "Turkish",
    "sw": "Swahili",
    "fa": "Persian",
    "el": "Greek",
    "sv": "Swedish",
    "no": "Norwegian",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "uk": "Ukrainian",
    "ro": "Romanian",
    "hu": "Hungarian",
    "cs": "Czech",
    "sk": "Slovak",
    "bg": "Bulgarian",
    "sr": "Serbian",
    "hr": "Croatian",
    "bn": "Bengali",
    "ur": "Urdu",
    "ms": "Malay",
    "id": "Indonesian",
    "th": "Thai",
    "vi": "Vietnamese",
    "he": "Hebrew",
    "am": "Amharic",
    "so": "Somali",
    "ta": "Tamil",
    "ne": "Nepali",
    "mn": "Mongolian",
}
_CO_CAPITAL = [
    "The capital of {name} is {capital}.",
    "{capital} is the capital city of {name}.",
    "{name}'s capital is {capital}.",
    "The seat of government of {name} is in {capital}, its capital.",
    "{name} is governed from its capital, {capital}.",
]
_CO_REGION = [
    "{name} is a country in {region}.",
    "{name} lies in {subregion}, part of {region}.",
    "Geographically, {name} belongs to {region}.",
    "{name} is located in {region}.",
]
_CO_OTHER = {
    "languages": ["People in {name} speak {languages}.", "The official languages of {name} include {languages}."],
    "population": ["{name} has a population of about {population}.", "About {population} people live in {name}."],
    "area": ["{name} covers an area of {area} square kilometres.", "The area of {name} is {area} km2."],
    "demonym": ["People from {name} are called {demonym}.", "The demonym of {name} is {demonym}."],
    "borders": ["{name} borders {borders}.", "Neighbouring countries of {name} are {borders}."],
    "currency": ["The currency code used in {name} is {currency}.", "{name} uses the currency {currency}."],
}
_CO_OPEN = ["{name} is a country.", "", "", "Country profile: {name}.", "A short note on {name}."]


def country_entities(countries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_iso3 = {c.get("ISO", {}).get("alpha3"): c["name"] for c in countries}
    out = []
    for c in countries:
        aliases = [s for s in c.get("altSpellings", []) if len(s) > 3 and not s.isupper() and s != c["name"]]
        langs = [LANGUAGES[x] for x in c.get("languages", []) if x in LANGUAGES]
        out.append(
            {
                "kind": "country",
                "name": c["name"],
                "aliases": aliases,
                "attrs": {
                    "capital": c["capital"],
                    "region": c["region"],
                    "subregion": c.get("subregion") or c["region"],
                    "languages": langs,
                    "population": c.get("population"),
                    "area": c.get("area"),
                    "demonym": c.get("demonym") or "",
                    "currencies": c.get("currencies") or [],
                    "borders": [by_iso3[b] for b in c.get("borders", []) if b in by_iso3],
                },
            }
        )
    return out


def country_doc(ent: dict[str, Any], rng: np.random.Generator) -> str:
    a, name = ent["attrs"], ent["name"]
    f = dict(
        name=name,
        capital=a["capital"],
        region=a["region"],
        subregion=a["subregion"],
        languages=_join(a["languages"]),
        population=f"{a['population']:,}" if a["population"] else "",
        area=f"{a['area']:,}" if a["area"] else "",
        demonym=a["demonym"],
        borders=_join(a["borders"][:4]),
        currency=(a["currencies"] or [""])[0],
    )
    other = [
        _pick(_CO_OTHER[k], rng)
        for k, v in (
            ("languages", a["languages"]),
            ("population", a["population"]),
            ("area", a["area"]),
            ("demonym", a["demonym"]),
            ("borders", a["borders"]),
            ("currency", a["currencies"]),
        )
        if v
    ]
    return _compose(_pick(_CO_OPEN, rng), [_pick(_CO_CAPITAL, rng), _pick(_CO_REGION, rng)], other, rng, f)


# ------------------------------------------------------------------------------------------ synthetic world

_ON = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z", "sh"]
_NUC = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "y"]
_CODA = ["", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk"]
_ORG_SUFFIX = [
    "Industries",
    "Institute",
    "Laboratories",
    "Group",
    "Foundation",
    "Works",
    "Company",
    "Collective",
    "Observatory",
    "Press",
]
_CITY_PREFIX = ["", "", "", "Port ", "New ", "East ", "Lake ", "Fort "]
_PROFESSIONS = [
    "chemist",
    "painter",
    "engineer",
    "historian",
    "physician",
    "architect",
    "composer",
    "botanist",
    "astronomer",
    "lawyer",
    "teacher",
    "novelist",
    "geologist",
    "economist",
    "sculptor",
    "pilot",
]
_SY_CITY = [
    "{name} was born in the city of {city}.",
    "{name}'s birthplace is {city}.",
    "{name} grew up in {city}, the city where they were born.",
    "Born in {city}, {name} lived there as a child.",
    "The city of {city} is where {name} was born.",
]
_SY_YEAR = [
    "{name} was born in the year {year}.",
    "{name} was born in {year}.",
    "Born in {year}, {name} became a {job}.",
    "The birth year of {name} is {year}.",
]
_SY_EMP = [
    "{name} works for {org}.",
    "{name} is employed by {org}.",
    "{org} employs {name} as a {job}.",
    "At {org}, {name} works as a {job}.",
]
_SY_OTHER = [
    "{name} is a {job} by training.",
    "Colleagues describe {name} as a dedicated {job}.",
    "{org} is based in {org_city}.",
    "{name} often travels to {city2}.",
]


def _word(rng: np.random.Generator, syll: int) -> str:
    w = "".join(_pick(_ON, rng) + _pick(_NUC, rng) for _ in range(syll)) + _pick(_CODA, rng)
    return w.capitalize()


def _unique_words(rng: np.random.Generator, n: int, syll: tuple[int, int], taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, int(rng.integers(syll[0], syll[1] + 1)))
        if w.lower() not in taken and len(w) > 3:
            taken.add(w.lower())
            out.append(w)
    return out


def synthetic_entities(
    n: int, seed: int, max_repeats: int, a: float, reserved: set[str], min_repeats: int = 1
) -> list[dict[str, Any]]:
    """`n` invented people, each with a birth city, birth year, employer and profession. `reserved` holds
    lower-case words that invented names must avoid (real entity names)."""
    if n == 0:
        return []
    rng = np.random.default_rng([seed, 7])
    taken = set(reserved)
    cities = [
        p + w
        for p, w in zip(
            [_pick(_CITY_PREFIX, rng) for _ in range(max(20, n // 10))],
            _unique_words(rng, max(20, n // 10), (2, 3), taken),
        )
    ]
    orgs = [f"{w} {_pick(_ORG_SUFFIX, rng)}" for w in _unique_words(rng, max(10, n // 8), (2, 3), taken)]
    org_city = {o: cities[int(rng.integers(len(cities)))] for o in orgs}
    firsts = _unique_words(rng, max(50, int(n**0.5) * 3), (1, 2), taken)
    lasts = _unique_words(rng, max(80, int(n**0.5) * 4), (2, 3), taken)
    names: set[str] = set()
    pmf = zipf_pmf(max_repeats, a, min_repeats)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        name = f"{_pick(firsts, rng)} {_pick(lasts, rng)}"
        if name in names:
            continue
        names.add(name)
        org = _pick(orgs, rng)
        out.append(
            {
                "kind": "synthetic",
                "name": name,
                "aliases": [],
                "repeats": int(rng.choice(len(pmf), p=pmf) + min_repeats),
                "attrs": {
                    "city": _pick(cities, rng),
                    "birth_year": int(rng.integers(1900, 2001)),
                    "employer": org,
                    "org_city": org_city[org],
                    "job": _pick(_PROFESSIONS, rng),
                    "city2": _pick(cities, rng),
                },
            }
        )
    return out


def synthetic_doc(ent: dict[str, Any], rng: np.random.Generator) -> str:
    a = ent["attrs"]
    f = dict(
        name=ent["name"],
        city=a["city"],
        year=a["birth_year"],
        org=a["employer"],
        job=a["job"],
        org_city=a["org_city"],
        city2=a["city2"],
    )
    core = [_pick(_SY_CITY, rng), _pick(_SY_YEAR, rng), _pick(_SY_EMP, rng)]
    return _compose("", core, list(_SY_OTHER), rng, f, max_other=2)


def write_docs(ent: dict[str, Any], rng: np.random.Generator) -> list[str]:
    make = {"element": element_doc, "country": country_doc, "synthetic": synthetic_doc}[ent["kind"]]
    return [make(ent, rng) for _ in range(ent["repeats"])]


# ------------------------------------------------------------------------------------------------ helpers


def _pick(options: list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def _compose(
    opening: str,
    core: list[str],
    other: list[str],
    rng: np.random.Generator,
    fields: dict[str, Any],
    max_other: int = 3,
) -> str:
    """Opening, then the core facts and 0..max_other other facts in random order."""
    k = int(rng.integers(0, min(max_other, len(other)) + 1))
    chosen = [other[i] for i in rng.permutation(len(other))[:k]]
    sentences = core + chosen
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    text = " ".join(s.format(**fields) for s in ([opening] if opening else []) + sentences)
    return " ".join(text.split())
