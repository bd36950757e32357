"""docs/config.md is the configuration reference generated from the schema: it lists every key and is current."""

from __future__ import annotations

from pathlib import Path

from hmem_lit import config_reference
from hmem_lit.effects import FIELD_EFFECTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_reference_is_generated_from_the_schema_and_current():
    assert DOC.read_text(encoding="utf-8") == config_reference.markdown(), (
        "docs/config.md is stale: python -m hmem_lit.config_reference > docs/config.md"
    )


def test_every_key_is_listed_once_with_a_description():
    rows = config_reference.rows()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == set(FIELD_EFFECTS)
    assert all(what for _, _, what, _ in rows), [k for k, _, what, _ in rows if not what]
