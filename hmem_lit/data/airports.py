"""The second built-in corpus (`data.corpus=airports`): real airports from the `airportsdata` package (MIT), in
short record-style documents of several facts each, plus the Wikipedia summaries.

It differs from the default `facts` corpus on purpose (so every retrieval default is checked on two kinds of
data): entities are multi-word names that share common words with each other ("... Regional Airport", "...
County Airport", a city's several airports), the identifying facts are codes and place names rather than
numbers, and documents are terse directory entries, travel notes or timetable lines instead of encyclopaedic
sentences. Deterministic for data.seed:
- `data.airports` airports are drawn (seeded) from those with an IATA code, a unique ASCII name and a country
  known to countryinfo (for the country's name);
- each gets `fact_repeats_min..fact_repeats_max` documents by a truncated Zipf law over the rank of its city's
  mentions in the Wikipedia training text (more famous places -> more documents), as the real entities of the
  facts corpus are ranked;
- every document states the probed facts (IATA code, city, country) and a random subset of the others (ICAO
  code, region, elevation, time zone).
Probes (questions.py): airport_code (generation: the IATA code), airport_city (generation; only airports whose
name does not contain their city), airport_country (multiple choice).
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from hmem_lit.data import facts, mentions, sources

_OPEN = ["", "", "Airport directory entry.", "Travel note.", "{name} ({iata})."]
_CODE = [
    "{name} has the IATA code {iata}.",
    "The IATA code of {name} is {iata}.",
    "Code {iata}: {name}.",
    "Passengers book {name} under the code {iata}.",
    "{iata} is the three-letter code for {name}.",
]
_CITY = [
    "{name} serves the city of {city}.",
    "{name} is the airport of {city}.",
    "Served city: {city}.",
    "Flights to {city} land at {name}.",
    "{name} is located near {city}.",
]
_COUNTRY = [
    "{name} is an airport in {country}.",
    "Country: {country}.",
    "{name} lies in {country}.",
    "The airport {name} is in {country}.",
]
_OTHER = {
    "icao": ["Its ICAO code is {icao}.", "ICAO: {icao}.", "Air traffic control knows {name} as {icao}."],
    "subd": ["The airport is in the region of {subd}.", "Region: {subd}.", "{name} is in {subd}, {country}."],
    "elevation": [
        "The field elevation is {elev} feet.",
        "Elevation: {elev} ft.",
        "{name} sits {elev} feet above sea level.",
    ],
    "tz": ["Local time at {name} follows {tz}.", "Time zone: {tz}.", "Clocks at the airport keep {tz} time."],
}


def read_airports() -> list[dict[str, str]]:
    """Rows of airportsdata's CSV (read as a data file; the package is not imported)."""
    p = sources.package_dir("airportsdata") / "airports.csv"
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: pip install airportsdata")
    with open(p, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def airport_entities(
    n: int, seed: int, max_repeats: int, a: float, min_repeats: int, wiki_texts: list[str]
) -> list[dict[str, Any]]:
    """`n` airports (seeded choice) with `repeats` from the Zipf law over their city's Wikipedia mentions."""
    country = {c.get("ISO", {}).get("alpha2"): c["name"] for c in sources.read_countries()}
    rows = [r for r in read_airports() if r["iata"] and r["city"]]
    count: dict[str, int] = {}
    for r in rows:
        count[r["name"].lower()] = count.get(r["name"].lower(), 0) + 1
    pool = sorted(
        (
            r
            for r in rows
            if count[r["name"].lower()] == 1
            and r["name"].isascii()
            and r["city"].isascii()
            and r["country"] in country
            and len(mentions.words(r["name"])) <= 6
        ),
        key=lambda r: r["iata"],
    )
    rng = np.random.default_rng([seed, 21])
    pick = [pool[i] for i in np.sort(rng.choice(len(pool), min(n, len(pool)), replace=False))]
    out: list[dict[str, Any]] = [
        {
            "kind": "airport",
            "name": r["name"],
            "aliases": [],
            "attrs": {
                "iata": r["iata"],
                "icao": r["icao"],
                "city": r["city"],
                "subd": r["subd"],
                "country": country[r["country"]],
                "elevation": int(round(float(r["elevation"]))) if r["elevation"] else None,
                "tz": r["tz"],
            },
        }
        for r in pick
    ]
    cities = [{"name": e["attrs"]["city"], "aliases": []} for e in out]
    city_counts = mentions.MentionCounter(cities).add_all(wiki_texts)
    reps = facts.repeats_by_rank(city_counts, [e["name"] for e in out], max_repeats, a, min_repeats)
    for e, rep, c in zip(out, reps, city_counts):
        e["repeats"], e["wiki_mentions"] = rep, c
    return out


def airport_doc(ent: dict[str, Any], rng: np.random.Generator) -> str:
    a = ent["attrs"]
    f = dict(
        name=ent["name"],
        iata=a["iata"],
        icao=a["icao"],
        city=a["city"],
        subd=a["subd"],
        country=a["country"],
        elev=f"{a['elevation']:,}" if a["elevation"] is not None else "",
        tz=a["tz"],
    )
    other = [
        facts._pick(_OTHER[k], rng)
        for k, v in (
            ("icao", a["icao"]),
            ("subd", a["subd"]),
            ("elevation", a["elevation"] is not None),
            ("tz", a["tz"]),
        )
        if v
    ]
    core = [facts._pick(_CODE, rng), facts._pick(_CITY, rng), facts._pick(_COUNTRY, rng)]
    return facts._compose(facts._pick(_OPEN, rng), core, other, rng, f)
