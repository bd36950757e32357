"""Sweeps in the report: find a sweep's run directories and its Optuna study, and draw the Optuna views
(optimisation history, parameter importances, parallel coordinates, slices) with optuna.visualization.matplotlib.

`hmem report <target>` resolves the target in this order:
1. an existing directory: its run directories; an Optuna journal (`*.journal`, `_sweep/journal.log`) or SQLite file
   (`*.db`) in it is the study;
2. a sweep name or YAML (`sweeps/<name>.yaml`): read with the sweeps module's own loader (`load_sweep`: study name,
   storage URL, `runs_dir` = `<out_dir>/sweeps/<name>/`); if that loader is missing or rejects the file, a plain
   YAML read: `storage` (a DB URL or journal path, any nesting level), `study_name` / `name` / file stem;
   plus any trial user attribute naming an existing run directory (`run_dir`);
3. `runs/sweeps/<name>/` when it exists.
A study that cannot be opened gives a note in the report, never an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmem_lit.config import ConfigError
from hmem_lit.config_text import load_yaml
from hmem_lit.errors import did_you_mean
from hmem_lit.resources import shipped_dir
from hmem_lit.sweeps.spec import load_sweep

SWEEPS_DIR, RUNS = shipped_dir("sweeps"), Path("runs")


@dataclass
class Target:
    name: str
    runs_dir: Path
    storage: str | None = None  # an Optuna storage URL or journal file path
    study_name: str | None = None
    notes: list[str] = field(default_factory=list)
    metric: str | None = None  # the sweep's objective metric, for axis labels


def _find(d: Any, keys: tuple[str, ...]) -> Any:
    """First value under any of `keys` at any nesting level of a YAML mapping."""
    if isinstance(d, dict):
        for k in keys:
            if isinstance(d.get(k), (str, int)):
                return d[k]
        for v in d.values():
            got = _find(v, keys)
            if got is not None:
                return got
    return None


def _storage_in(folder: Path) -> str | None:
    for pat in ("*.journal", "_sweep/journal.log", "*.db", "*.sqlite"):
        hits = sorted(folder.glob(pat))
        if hits:
            return str(hits[0])
    return None


def _from_yaml(yml: Path) -> Target:
    try:  # the sweeps module knows its own defaults (experiment name, journal location)
        spec = load_sweep(yml)
        runs_dir = getattr(spec, "runs_dir", None) or Path(spec.out_dir) / "sweeps" / spec.name
        return Target(spec.name, Path(runs_dir), str(spec.storage_url), spec.name, metric=getattr(spec, "metric", None))
    except Exception as e:  # noqa: BLE001 - fall back to reading the YAML ourselves
        note = f"the sweeps loader could not read {yml} ({type(e).__name__}); read the YAML directly"
    raw = load_yaml(yml.read_text(), str(yml)) or {}
    name = str(_find(raw, ("name",)) or yml.stem)
    storage = _find(raw, ("storage",))
    runs_dir = next((d for d in (RUNS / "sweeps" / name, RUNS / f"sweep-{name}") if d.is_dir()), RUNS / "sweeps" / name)
    if storage and "://" not in str(storage) and not runs_dir.is_dir():
        runs_dir = Path(str(storage)).parent
    storage = storage or (_storage_in(runs_dir) if runs_dir.is_dir() else None)
    return Target(
        name, runs_dir, str(storage) if storage else None, str(_find(raw, ("study_name", "study")) or name), [note]
    )


def resolve(target: str) -> Target:
    p = Path(target)
    if p.is_dir():
        t = Target(p.name, p, _storage_in(p), None)
        if t.storage and (SWEEPS_DIR / f"{p.name}.yaml").is_file():  # the sweep's own file names its objective
            t.metric = _from_yaml(SWEEPS_DIR / f"{p.name}.yaml").metric
        return t
    yml = p if p.suffix in (".yaml", ".yml") and p.is_file() else SWEEPS_DIR / f"{target}.yaml"
    if yml.is_file():
        return _from_yaml(yml)
    for d in (RUNS / "sweeps" / target, RUNS / f"sweep-{target}"):
        if d.is_dir():
            return Target(target, d, _storage_in(d), None)
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:  # a path, not a sweep name
        raise ConfigError(
            f"{target}: neither a runs directory nor a sweep (no such path); pass a runs directory "
            "(e.g. runs/) or a sweep name from `hmem list`"
        )
    raise ConfigError(
        f"{target}: neither a runs directory nor a sweep (no {SWEEPS_DIR / (target + '.yaml')}, "
        f"no {RUNS / 'sweeps' / target}/)" + did_you_mean(target, [f.stem for f in SWEEPS_DIR.glob("*.yaml")])
    )


def load_study(t: Target):
    """-> (optuna Study or None, notes). Never raises for a missing / unreadable study."""
    if not t.storage:
        return None, []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = t.storage
    storage: str | optuna.storages.BaseStorage = url  # the URL, or a JournalStorage over a journal file
    if "://" not in url:
        path = Path(url)
        if not path.is_file():
            return None, [f"Optuna storage {url} not found: no sweep views"]
        if path.suffix in (".db", ".sqlite"):
            storage = f"sqlite:///{path}"
        else:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(path)))
    try:
        name = t.study_name
        if name is None:
            names = optuna.get_all_study_names(storage=storage)
            if len(names) != 1:
                return None, [f"{t.storage} holds {len(names)} studies ({', '.join(names)}); name one in sweeps/*.yaml"]
            name = names[0]
        return optuna.load_study(study_name=name, storage=storage), []
    except Exception as e:  # noqa: BLE001 - any storage failure is a note, not a crash
        return None, [f"could not open Optuna study {t.study_name!r} in {t.storage}: {type(e).__name__}: {e}"]


def trial_run_dirs(study) -> list[Path]:
    """Run directories that trials name in their user attributes (any string value that is one), and the study's
    baseline runs (spec key `baselines`: the anchor-only runs its figures compare with)."""
    out = [Path(v) for v in study.user_attrs.get("baselines", []) if (Path(v) / "config.yaml").is_file()]
    for tr in study.trials:
        for v in tr.user_attrs.values():
            if isinstance(v, str) and len(v) < 500 and (Path(v) / "config.yaml").is_file():
                out.append(Path(v))
    return out


def trials_table(study) -> tuple[list[str], list[list[Any]]]:
    params = sorted({k for t in study.trials for k in t.params})
    header = ["trial", "state", "value", *params]
    rows = [
        [
            t.number,
            t.state.name,
            t.value if t.values and len(t.values) == 1 else t.values,
            *[t.params.get(k) for k in params],
        ]
        for t in study.trials
    ]
    return header, rows


_View = tuple[str, str, Callable[..., Any], int, str | None, tuple[float, float]]


def _optuna_view_specs(ovm: Any, done: list, varying: list[str]) -> list[_View]:
    """-> [(id, title, optuna plot function, complete trials needed, why it cannot be drawn or None, size)]."""
    return [
        ("optuna_history", "optimisation history", ovm.plot_optimization_history, 1, None, (4.5, 2.6)),
        (
            "optuna_importance",
            "parameter importances (fANOVA)",
            ovm.plot_param_importances,
            4,
            "needs at least 4 complete trials and 2 varying parameters" if len(done) < 4 or len(varying) < 2 else None,
            (4.5, 0.5 + 0.35 * max(2, len(varying))),
        ),
        (
            "optuna_parallel",
            "parallel coordinates",
            ovm.plot_parallel_coordinate,
            2,
            "needs at least one varying parameter" if not varying else None,
            (7.0, 2.8),
        ),
        (
            "optuna_slice",
            "slices (objective vs each parameter)",
            ovm.plot_slice,
            1,
            "needs at least one varying parameter" if not varying else None,
            (min(7.0, 2.2 * max(1, len(varying)) + 1.0), 2.6),
        ),
    ]


def _restyle_optuna_figure(fig: Any, vid: str, size: tuple[float, float]) -> None:
    """The report's look on an optuna figure: its size, no titles, small labels, legends out of the way."""
    from matplotlib.ticker import MaxNLocator

    fig.set_size_inches(*size)
    fig.suptitle("")
    for ax in fig.axes:  # the panels and any colour bar
        if vid == "optuna_parallel":  # optuna's Blues draws the worst trials white on a grey background
            for coll in ax.collections:
                if coll.get_array() is not None:
                    coll.set_cmap("viridis")
        for loc in ("left", "center", "right"):
            ax.set_title("", loc=loc)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        for txt in ax.texts:
            txt.set_fontsize(7)
        if vid == "optuna_history":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        leg = ax.get_legend()
        if leg is not None and vid == "optuna_importance":
            leg.remove()  # one objective: the legend only repeats its name and covers the bars
        elif leg is not None:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)


def optuna_views(study, metric: str | None = None) -> list[tuple[str, str, Any, list[str]]]:
    """-> [(id, title, figure or None, notes)]: each view guarded, a failing or impossible one gives a note."""
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    multi = len(study.directions) > 1
    names = getattr(study, "metric_names", None)
    name = (names[0] if names else None) or metric or "objective"
    kw: dict[str, Any] = {"target_name": name + (" (objective 1)" if multi else "")}
    if multi:
        kw["target"] = lambda t: t.values[0]
    params = sorted({k for t in done for k in t.params})
    varying = [k for k in params if len({repr(t.params.get(k)) for t in done}) > 1]
    out = []
    for vid, title, fn, need, why, size in _optuna_view_specs(ovm, done, varying):
        if len(done) < need or why:
            out.append((vid, title, None, [f"skipped: {why or f'needs {need} complete trial(s), has {len(done)}'}"]))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extra = {} if fn is ovm.plot_optimization_history else {"params": varying}
                res = fn(study, **kw, **extra)
            axes = list(res.flat) if hasattr(res, "flat") else [res]
            fig = axes[0].figure
            _restyle_optuna_figure(fig, vid, size)
            out.append((vid, title, fig, [f"objective 1 of a multi-objective study ({name})"] if multi else []))
        except Exception as e:  # noqa: BLE001
            plt.close("all")
            out.append((vid, title, None, [f"skipped: {type(e).__name__}: {e}"]))
    return out
