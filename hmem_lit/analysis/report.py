"""`hmem report <runs dir | sweep name> [--out DIR] [--spec FILE ...]`: collect the runs, draw every figure and
table declared in the specs (analysis/*.yaml), write runs.csv, figures/<id>.png+.pdf, tables/<id>.md, report.md
and a self-contained report.html (figures base64-embedded). Nothing in it crashes on missing data: a figure that
cannot be drawn is listed under "Skipped" with the reason; incomplete and failed runs are listed, never plotted.

Spec file format (YAML): `figures:` and `tables:` lists; each entry has `id`, `kind` (a key of
figures.FIGURES, or `table`), `reproduces` (the paper figure), `title`, optional `select` ({column: value or
[values]}), `eval_mode` (default fetched), and the kind's own keys (see analysis/paper.yaml).
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import html
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from hmem_lit import runs
from hmem_lit.analysis import compare as cmp
from hmem_lit.analysis import sweep as sweep_mod
from hmem_lit.analysis.collect import FILTERS, apply_spec, collect
from hmem_lit.analysis.figures import FIGURES, PANEL_KEYS, Skip
from hmem_lit.analysis.style import STYLE
from hmem_lit.analysis.tables import CONFIG_COLUMNS, METRIC_COLUMNS, Table, make_table, runs_overview, simple_table
from hmem_lit.config import ConfigError
from hmem_lit.config_text import load_yaml
from hmem_lit.resources import shipped_dir, work_root

SPEC_DIR = shipped_dir("analysis")  # the figure specs analysis/*.yaml: the checkout's, else the installed copy
CSV_DROP = ("path",)
CLASSIFY = (
    "kind: memory = memory.type is not none; anchor = no memory, anchor params within 2% of a memory run's "
    "anchor; dense-2x = no memory, 1.7-2.3x such an anchor; same-runtime dense = no memory, within 5% of a "
    "memory run's anchor + fetched; any other dense run = anchor. Seeds of one config are averaged "
    "(error bars / ± = std over seeds)."
)  # absolute paths stay out of the shared table


@dataclass
class Item:
    id: str
    title: str
    reproduces: str = ""
    files: list[str] = field(default_factory=list)  # relative to the report dir (png first)
    table: Table | None = None
    runs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


TABLE_KEYS = ("id", "kind", "reproduces", "title", "select", "filter", "eval_mode", "columns", "modes", "sort", "needs")


def _check_keys(f: Path, what: str, spec: dict, allowed: tuple[str, ...]) -> None:
    for k in spec:
        if k not in allowed:
            near = difflib.get_close_matches(str(k), allowed, n=1)
            raise ConfigError(
                f"{f}: {what}: unknown key {k!r}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + f"; allowed: {', '.join(allowed)}"
            )


def load_specs(paths: Sequence[str | Path] | None = None) -> tuple[list[dict], list[dict]]:
    """Figure and table specs from analysis/*.yaml (or `paths`), validated: every key known to its kind (the kind's
    own keys are declared where it is registered), filters and table columns known; one-line errors."""
    files = [Path(p) for p in paths] if paths else sorted(SPEC_DIR.glob("*.yaml"))
    figs: list[dict] = []
    tabs: list[dict] = []
    for f in files:
        if not f.is_file():
            raise ConfigError(f"{f}: spec file not found")
        d = load_yaml(f.read_text(), str(f)) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{f}: the top level must be a mapping with figures: and tables:")
        _check_keys(f, "top level", d, ("figures", "tables"))
        for s in d.get("figures") or []:
            if not isinstance(s, dict) or s.get("kind") not in FIGURES:
                kind = s.get("kind") if isinstance(s, dict) else None
                raise ConfigError(
                    f"{f}: figure {s.get('id') if isinstance(s, dict) else s!r}: kind {kind!r} unknown; "
                    f"known: {', '.join(FIGURES.names())}"
                )
            what = f"figure {s.get('id')!r} (kind {s['kind']})"
            _check_keys(f, what, s, FIGURES.get(s["kind"]).spec_keys)
            for p in s.get("panels") or []:
                _check_keys(f, f"{what} panel", p, PANEL_KEYS)
            if s.get("filter") is not None and s["filter"] not in FILTERS:
                raise ConfigError(f"{f}: {what}: filter {s['filter']!r} unknown; known: {', '.join(FILTERS)}")
            figs.append(s)
        for s in d.get("tables") or []:
            what = f"table {s.get('id')!r}"
            _check_keys(f, what, s, TABLE_KEYS)
            bad = [c for c in s.get("columns") or [] if c not in CONFIG_COLUMNS and c not in METRIC_COLUMNS]
            if bad:
                raise ConfigError(
                    f"{f}: {what}: unknown column {bad[0]!r}; known: {', '.join([*CONFIG_COLUMNS, *METRIC_COLUMNS])}"
                )
            tabs.append(s)
    ids = [s.get("id") for s in figs + tabs]
    dup = sorted({str(i) for i in ids if ids.count(i) > 1 or not i})
    if dup:
        raise ConfigError(f"spec ids must be unique and present; problem ids: {dup}")
    return figs, tabs


def unmet(df: Any, spec: dict[str, Any]) -> str | None:
    """Why a figure or table would not be about the runs present (its `needs:` over the memory runs it would draw:
    `distinct: {column: n}` at least n values, `any: {column: [values]}` one of them), or None: drawn."""
    needs = spec.get("needs") or {}
    if not needs or not len(df):
        return None
    rows, _ = apply_spec(df, spec, spec.get("eval_mode", "fetched"))
    mem = rows[rows.memory_type != "none"].drop_duplicates("config_id")
    for col, n in (needs.get("distinct") or {}).items():
        got = int(mem[col].nunique()) if col in mem else 0
        if got < int(n):
            return f"compares memory runs that differ in {col}: needs {n}, found {got} (no such runs here)"
    for col, vals in (needs.get("any") or {}).items():
        vals = vals if isinstance(vals, list) else [vals]
        if col not in mem or not mem[col].isin(vals).any():
            return f"needs a memory run with {col} in {vals} (none here)"
    return None


def _save(fig, out: Path, fid: str) -> list[str]:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(
            out / "figures" / f"{fid}.{ext}",
            dpi=200,
            bbox_inches="tight",
            metadata=None if ext == "png" else {"CreationDate": None},
        )
        files.append(f"figures/{fid}.{ext}")
    plt.close(fig)
    return files


def _guard(item: Item, fn, *args) -> Any:
    try:
        with plt.rc_context(STYLE):
            return fn(*args)
    except Skip as e:
        item.skipped = str(e)
    except Exception as e:  # noqa: BLE001 - a broken figure must not take the report down
        item.skipped = f"failed: {type(e).__name__}: {e}"
        print(f"hmem report: {item.id} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return None


def build_report(target: str, out: str | Path | None = None, specs: list[str] | None = None) -> Path:
    t = sweep_mod.resolve(target)
    out = Path(out) if out else work_root() / "analysis" / "generated" / t.name  # never inside an installed package
    figs, tabs = load_specs(specs)
    study, study_notes = sweep_mod.load_study(t)
    runs.claim_out_dir(out, ".hmem-report", ("report.md", "runs.csv"))  # its own earlier report is replaced
    extra = sweep_mod.trial_run_dirs(study) if study else []
    if not t.runs_dir.is_dir():
        t.notes.append(
            f"no runs directory {t.runs_dir}"
            + (f"; {len(extra)} trial run directories named by the study" if extra else "")
        )
    col = collect(t.runs_dir if t.runs_dir.is_dir() else None, extra)
    df = col.table
    df.drop(columns=[c for c in CSV_DROP if c in df.columns]).to_csv(out / "runs.csv", index=False)
    items: list[Item] = _comparison_items(col, out) if len(df) else []
    for s in figs:
        it = Item(s["id"], s.get("title", s["id"]), s.get("reproduces", ""))
        it.skipped = "no complete runs" if len(df) == 0 else unmet(df, s)
        drawn = _guard(it, FIGURES[s["kind"]], df, s) if not it.skipped else None
        if drawn:
            it.files, it.runs, it.notes = _save(drawn.fig, out, it.id), drawn.runs, drawn.notes
            if drawn.table is not None:  # a figure with its own table (e.g. rag): shown below it, written beside it
                (out / "tables").mkdir(exist_ok=True)
                (out / "tables" / f"{it.id}.md").write_text(drawn.table.markdown() + "\n")
                it.table = drawn.table
                it.files.append(f"tables/{it.id}.md")
        items.append(it)
    for s in tabs:
        it = Item(s["id"], s.get("title", s["id"]), s.get("reproduces", ""))
        it.skipped = "no complete runs" if len(df) == 0 else unmet(df, s)
        tab = _guard(it, make_table, df, s) if not it.skipped else None
        if tab:
            (out / "tables").mkdir(exist_ok=True)
            (out / "tables" / f"{it.id}.md").write_text(tab.markdown() + "\n")
            it.table, it.runs, it.notes, it.files = tab, tab.runs, tab.notes, [f"tables/{it.id}.md"]
        items.append(it)
    sweep_items = []
    if study is not None:
        h, rows = sweep_mod.trials_table(study)
        sweep_items.append(Item("optuna_trials", f"trials of study {study.study_name}", table=simple_table(h, rows)))
        with plt.rc_context(STYLE):
            views = sweep_mod.optuna_views(study, t.metric)
        for vid, title, fig, notes in views:
            it = Item(vid, title, notes=notes, skipped=notes[0][9:] if fig is None else None)
            if fig is not None:
                it.files = _save(fig, out, vid)
            sweep_items.append(it)
    page = Page(target, t, col, items, sweep_items, [*t.notes, *study_notes])
    (out / "report.md").write_text(page.markdown())
    (out / "report.html").write_text(page.html(out))
    return out


def _comparison_items(col: Any, out: Path) -> list[Item]:
    """The arms with their CIs and every fetched-memory difference with its verdict (analysis/compare.py), from the
    runs' item records; their machine-readable record is comparisons.csv."""
    c = cmp.compare(col.root, col=col)
    if c is None:
        return []
    pd.DataFrame(c.records()).to_csv(out / "comparisons.csv", index=False)
    arms_t, diffs_t, notes = cmp.tables(c)
    (out / "tables").mkdir(exist_ok=True)
    (out / "tables" / "comparisons.md").write_text("\n\n".join([arms_t.markdown(), diffs_t.markdown(), *notes]) + "\n")
    head = "Arms (test entities; mean [95% CI])"
    items = [
        Item("arms", head, "Table 1", ["tables/comparisons.md", "comparisons.csv"], arms_t, arms_t.runs),
        Item("differences", "Fetched memory minus every other arm, with the verdict", table=diffs_t, notes=notes),
    ]
    fig1 = Item("fig1_recall", "Fact recall by entity frequency: training phrasing, paraphrase, hard MC", "Fig. 1")
    drawn = _guard(fig1, cmp.figure, c)
    if drawn:
        fig1.files, fig1.runs = _save(drawn[0], out, fig1.id), drawn[1]
    routing = cmp.routing_table(c)
    if routing is not None:
        (out / "tables" / "routing.md").write_text(routing.markdown() + "\n")
        items.append(Item("routing", "Routed to the entity's leaf, and accuracy there vs elsewhere", table=routing))
    return [items[0], fig1, *items[1:]]


@dataclass
class Page:
    target: str
    t: Any
    col: Any
    items: list[Item]
    sweep: list[Item]
    notes: list[str]

    def _intro(self) -> list[str]:
        n = self.col.table.run.nunique() if len(self.col.table) else 0
        return [
            f"Source: `{self.t.runs_dir}`" + (f" (sweep `{self.t.name}`)" if self.sweep else ""),
            f"Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; {n} complete run(s), "
            f"{len(self.col.incomplete)} incomplete or failed; the collected table is `runs.csv` "
            "(one row per run x evaluation memory mode).",
            *self.notes,
        ]

    def _sections(self):
        """(heading, items) in page order; skipped figures are gathered at the end."""
        drawn = [i for i in self.items if not i.skipped]
        yield "Figures and tables", drawn
        if self.sweep:
            yield "Sweep (Optuna)", [i for i in self.sweep if not i.skipped]
        yield "Skipped (missing data)", [i for i in self.items + self.sweep if i.skipped]

    def markdown(self) -> str:
        L = [f"# Report: {self.target}", "", *[f"- {x}" for x in self._intro()], ""]
        for head, its in self._sections():
            L += [f"## {head}", ""]
            L += [] if its else ["(none)", ""]
            for i in its:
                if i.skipped:
                    L.append(f"- **{i.id}** ({i.reproduces or i.title}): {i.skipped}")
                    continue
                L += [f"### {i.id}: {i.title}" + (f" (reproduces {i.reproduces})" if i.reproduces else ""), ""]
                if i.table:
                    L += [i.table.markdown(), ""]
                L += [f"![{i.id}]({f})" for f in i.files if f.endswith(".png")]
                L += [f"Runs ({len(i.runs)}): " + ", ".join(f"`{r}`" for r in i.runs)] if i.runs else []
                L += [f"- note: {n}" for n in i.notes] + [""]
            L.append("")
        L += [
            "## Runs",
            "",
            CLASSIFY,
            "",
            runs_overview(self.col.table).markdown() if len(self.col.table) else "(none)",
            "",
        ]
        L += ["## Incomplete or failed runs (not plotted)", ""]
        L += [f"- `{r['run']}` ({r['status']}): {r['reason']}" for r in self.col.incomplete] or ["(none)"]
        return "\n".join(L) + "\n"

    def html(self, out: Path) -> str:
        e = html.escape
        B = [
            f"<h1>Report: {e(self.target)}</h1><ul>"
            + "".join(f"<li>{e(x.replace('`', ''))}</li>" for x in self._intro())
            + "</ul>"
        ]
        for head, its in self._sections():
            B.append(f"<h2>{e(head)}</h2>" + ("" if its else "<p>(none)</p>"))
            if any(i.skipped for i in its):
                B.append(
                    "<ul>"
                    + "".join(f"<li><b>{e(i.id)}</b> ({e(i.reproduces or i.title)}): {e(i.skipped)}</li>" for i in its)
                    + "</ul>"
                )
                continue
            for i in its:
                B.append(
                    f"<h3>{e(i.id)}: {e(i.title)}"
                    + (f" <small>(reproduces {e(i.reproduces)})</small>" if i.reproduces else "")
                    + "</h3>"
                )
                if i.table:
                    B.append(i.table.html())
                for f in i.files:
                    if f.endswith(".png"):
                        data = base64.b64encode((out / f).read_bytes()).decode()
                        B.append(f'<img alt="{e(i.id)}" src="data:image/png;base64,{data}">')
                if i.runs:
                    B.append(
                        f"<p class=runs>Runs ({len(i.runs)}): "
                        + ", ".join(f"<code>{e(r)}</code>" for r in i.runs)
                        + "</p>"
                    )
                B += [f"<p class=note>note: {e(n)}</p>" for n in i.notes]
        B.append(
            f"<h2>Runs</h2><p>{e(CLASSIFY)}</p>"
            + (runs_overview(self.col.table).html() if len(self.col.table) else "<p>(none)</p>")
        )
        B.append(
            "<h2>Incomplete or failed runs (not plotted)</h2><ul>"
            + (
                "".join(
                    f"<li><code>{e(r['run'])}</code> ({e(r['status'])}): {e(r['reason'])}</li>"
                    for r in self.col.incomplete
                )
                or "<li>(none)</li>"
            )
            + "</ul>"
        )
        css = (
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;display:block;margin:.5em 0}table{border-collapse:collapse;font-size:.85em;"
            "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
            ".note{color:#8a5a00;font-size:.9em}.runs{font-size:.8em;color:#555}"
        )
        return (
            f"<!doctype html><html><head><meta charset=utf-8><title>hmem report: {e(self.target)}</title>"
            f"<style>{css}</style></head><body>{''.join(B)}</body></html>\n"
        )


def report_main(target: str, out: str | None = None, specs: list[str] | None = None) -> int:
    path = build_report(target, out, specs)
    print(f"[hmem] report: {path / 'report.html'} ({path / 'report.md'}, {path / 'runs.csv'})")
    return 0
