"""Property: any config key given a value that is wrong for its declared type (a word for a number, a fraction for
an integer, a non-finite float, an integer beyond int64, a malformed or structured value where a scalar goes, a
scalar where a section or list goes) makes `hmem train` exit 2 with one line naming that key, and creates nothing.

The keys and their types come from the config dataclasses, so a new field is covered without editing this file.
"""

from __future__ import annotations

import tempfile
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
    key, value = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        argv = ["train", str(DEBUG_YAML), *tiny_overrides(root / "runs"), f"data.dir={root / 'data'}", f"{key}={value}"]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (key, value, err)
        assert "\n" not in err and "Traceback" not in err, (key, value, err)
        assert err.startswith(f"hmem: error: {key}"), (key, value, err)
        assert list(root.iterdir()) == [], (key, value)


def test_every_declared_key_is_covered():
    kinds = dict(KEYS)
    assert len(kinds) >= 90 and {"train", "anchor.d_model", "optim.lr", "memory.levels", "data.files"} <= set(kinds)
