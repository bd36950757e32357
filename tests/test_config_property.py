"""Property: any config key given a value that is wrong for its declared type (a word for a number, a fraction for
an integer, a non-finite float, an integer beyond int64, a malformed or structured value where a scalar goes, a
scalar where a section or list goes) makes `hmem train` exit 2 with one line naming that key, and creates nothing.

The keys and their types come from the config dataclasses, so a new field is covered without editing this file.
"""

from __future__ import annotations

import tempfile
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hmem_lit.cli import main  # noqa: E402
from hmem_lit.config import RunConfig  # noqa: E402

from .conftest import DEBUG_YAML, tiny_overrides  # noqa: E402


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, type) for every field; sections recurse and are listed themselves as 'section'."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if is_dataclass(tp):
            out.append((key, "section"))
            out.extend(_leaves(tp, key + "."))
        else:
            out.append((key, tp))
    return out


def _kind(tp: object) -> str | None:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        tp = next(a for a in args if a is not type(None))
    if tp == "section":
        return "section"
    if typing.get_origin(tp) is list:
        return "list"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp)  # Any: no type to violate


KEYS = [(k, _kind(t)) for k, t in _leaves(RunConfig) if _kind(t)]

MALFORMED = ["[1,", "{a: 1", "[[", "]"]  # YAML cannot parse these
STRUCTURED = ["[1, 2]", "{a: 1}"]
BAD = {  # values wrong for every key of the kind
    "int": ["abc", "1.5", "1e3", "9" * 25, "-" + "9" * 25, "true"] + MALFORMED + STRUCTURED,
    "float": ["abc", "inf", "-inf", "nan", "1e400", ""] + MALFORMED + STRUCTURED,
    "bool": ["maybe", "2", "abc", "1.5"] + MALFORMED + STRUCTURED,
    "str": MALFORMED + STRUCTURED,
    "list": ["abc", "5", "{a: 1}"] + MALFORMED,
    "section": ["5", "abc", "[1, 2]", "true"] + MALFORMED,
}


@st.composite
def bad_override(draw) -> tuple[str, str]:
    key, kind = draw(st.sampled_from(KEYS))
    return key, draw(st.sampled_from(BAD[kind]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad_override())
def test_any_key_with_a_wrong_value_is_one_line_exit_2_nothing_created(capsys, case):
    _refused_in_one_line(capsys, *case)


def _refused_in_one_line(capsys, key: str, value: str) -> None:
    """`hmem train` with key=value: exit 2, one line starting with the key, nothing created."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        argv = ["train", str(DEBUG_YAML), *tiny_overrides(root / "runs"), f"data.dir={root / 'data'}", f"{key}={value}"]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (key, value, err)
        assert "\n" not in err and "Traceback" not in err, (key, value, err)
        assert err.startswith(f"hmem: error: {key}"), (key, value, err)  # its own rule, or one checked first
        assert list(root.iterdir()) == [], (key, value)


def test_every_declared_key_is_covered():
    kinds = dict(KEYS)
    assert len(kinds) >= 90 and {"train", "anchor.d_model", "optim.lr", "memory.levels", "data.files"} <= set(kinds)


# ---------------------------------------------------------------------------------------------------------------
# ranges: every numeric key's accepted values are declared beside the field (config_text.ranged); a value just past
# either bound, or absurdly large, is one line naming the key, exit 2, nothing created, and a value inside is never
# refused for its range


def _ranged(cls: type, prefix: str = "") -> list[tuple[str, object, bool, str]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(_ranged(tp, f"{prefix}{f.name}."))
        elif f.metadata.get("range") is not None:
            if isinstance(tp, types.UnionType):  # X | None
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            kind = _kind(tp)
            item = "int" if kind == "list" and "int" in str(tp) else "float" if kind == "list" else kind
            out.append((f"{prefix}{f.name}", f.metadata["range"], bool(f.metadata.get("each")), str(item)))
    return out


RANGED = _ranged(RunConfig)


def _outside(rng, kind: str, side: str) -> float:
    if side == "lo":
        return rng.lo if rng.lo_open else (rng.lo - 1 if kind == "int" else rng.lo - 1e-3 * max(1.0, abs(rng.lo)))
    if side == "hi":
        return rng.hi if rng.hi_open else (rng.hi + 1 if kind == "int" else rng.hi * 1.001 + 1e-3)
    return 2e15 if kind == "float" else 2 * 10**16  # a typo'd size: refused before any work, not a hang


@st.composite
def out_of_range(draw) -> tuple[str, str]:
    key, rng, each, kind = draw(st.sampled_from(RANGED))
    sides = [s for s, b in (("lo", rng.lo), ("hi", rng.hi)) if b is not None] + (["huge"] if rng.hi else [])
    v = _outside(rng, kind, draw(st.sampled_from(sides)))
    text = str(int(v)) if kind == "int" else repr(float(v))
    return key, f"[{text}]" if each else text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out_of_range())
def test_a_value_outside_a_declared_range_is_one_line_exit_2_nothing_created(capsys, case):
    _refused_in_one_line(capsys, *case)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_value_inside_a_declared_range_is_never_refused_for_its_range(data):
    from hmem_lit.config import ConfigError, load_config

    key, rng, each, kind = data.draw(st.sampled_from(RANGED))
    lo = rng.lo if rng.lo is not None else -1e6
    hi = rng.hi if rng.hi is not None else 1e6
    if kind == "int":
        v: float = data.draw(st.integers(int(lo) + int(rng.lo_open), int(hi) - int(rng.hi_open)))
    else:
        v = data.draw(st.floats(lo, hi, exclude_min=rng.lo_open, exclude_max=rng.hi_open, allow_nan=False))
    text = str(v) if kind == "int" else repr(float(v))
    try:
        load_config(DEBUG_YAML, [f"{key}=[{text}]" if each else f"{key}={text}"])
    except ConfigError as e:  # another rule may refuse it (e.g. min_lr <= lr), never its own range
        assert not str(e).startswith(f"{key}: must be in {rng.text()}"), (key, v, str(e))


def test_every_numeric_key_declares_a_range():
    numeric = {k for k, t in KEYS if t in ("int", "float")} - {"memory.pkm.v_dim"}
    declared = {k for k, *_ in RANGED}
    # keys whose values are not sizes or rates: ids and switches
    free = {"retriever.oracle_field", "train.subtree", "eval.block_level"}
    assert numeric - declared - free == set(), sorted(numeric - declared - free)
