"""The report as a page a person reads: report.html opened in headless chromium (Playwright), every figure loaded,
no console error, a screenshot taken. Slow (a browser start); skipped where chromium or playwright is missing."""

from __future__ import annotations

import pytest

from hmem_lit.analysis import browser_check
from hmem_lit.config import load_config
from hmem_lit.train import train

from .conftest import DEBUG_YAML, tiny_overrides

pytestmark = pytest.mark.slow


def test_report_page_loads_every_figure_in_a_browser(tmp_path):
    pytest.importorskip("playwright")
    if browser_check.chromium_path() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    from hmem_lit.analysis.report import build_report

    for name, extra in (("anchor", []), ("mem", ["memory.type=ffn", "memory.levels=[2,4]", "retriever.depth=2"])):
        train(load_config(DEBUG_YAML, [*tiny_overrides(tmp_path, name=name, **{"train.max_tokens": 6000}), *extra]))
    out = build_report(str(tmp_path / "000_debug"), tmp_path / "rep")
    shot = tmp_path / "shot.png"
    res = browser_check.check_report(out, shot)
    assert res["images"] >= 2 and res["broken"] == [], res
    assert res["console_errors"] == [], res
    assert shot.stat().st_size > 10_000
