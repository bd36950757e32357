"""Sweep YAML schema: loading, validation (one-line `ConfigError`s), grid enumeration, deterministic trial names.

A sweep file is a mapping with these keys (all but `base` and `space` optional):

    name: memory_type                  # study name; default: the file's stem
    base: 000_debug                    # base experiment (path, or a name in experiments/)
    overrides: {train.max_tokens: 40000}   # raw config keys applied to every trial (mapping or [k=v, ...])
    fixed: {bank_depth: 2}             # params applied to every trial (raw keys or paper-language params)
    space:                             # searched params: raw config keys (with a dot) or paper-language params
      memory.type: [ffn, lora, kv]     #   grid mode: a list of values per axis
      fetched: {type: float, low: 1e4, high: 1e5, log: true}   # optuna mode: int | float | categorical
      cases:                           #   grid mode: settings that vary together, one mapping per value, e.g.
        - {memory.type: ffn, optim.memory_lr: 3.0e-3}   #   each memory type at its own learning rate
        - {memory.type: lora, optim.memory_lr: 3.0e-2}
    mode: grid                         # grid | optuna
    objective: {metric: val/loss, direction: minimize}   # or eval.<memory>.<metric>, e.g. eval.fetched.hmem_sk
    evaluate: false                    # true, or {enabled, tasks, limit}: also evaluate when the objective is val/loss
    n_trials: 8                        # optuna: total cap over restarts; grid: default all points
    sampler: {type: tpe, seed: 0}      # tpe | random | qmc (optuna mode)
    pruner: {type: none}               # none | median | percentile | hyperband | successive_halving (+ kwargs)
    storage: null                      # null = <out_dir>/sweeps/<name>/study.journal; or sqlite:///abs.db, postgresql://...
    translate: {tolerance: 0.05, budget: auto, memory_type: ffn, q: 0.25, shape: null, max_layers: null}
    profiles: {gpu: {...}}             # `profile=gpu`: its overrides / fixed / space replace these, other keys merge
    baselines: [101_qs_anchor]         # experiments trained (and evaluated) once next to the trials, with the
                                       #   sweep's overrides except memory.*: the anchor-only runs figures compare to
    protocol: frozen                   # frozen (default: memory on a trained anchor, frozen: A3) | cotrain (as the
                                       #   base says: A4); sweeps/protocol.py
    heartbeat_s: 30                    # RUNNING trials of other hosts count as interrupted after stale_after_s
    stale_after_s: 900
    slurm: {partition: gpu, time: 240} # `--launcher slurm`: the workers' job options (hmem_lit.launch.options)
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmem_lit.config import RENAMED, RETRIEVER_FLAT_NAME, ConfigError, load_config, merged_value, schema
from hmem_lit.config import _routed_types as routed_types  # from the registry's source: no torch import
from hmem_lit.config_text import load_yaml, valid_keys
from hmem_lit.errors import did_you_mean
from hmem_lit.resources import shipped_dir

EXPERIMENTS_DIR, SWEEPS_DIR = shipped_dir("experiments"), shipped_dir("sweeps")  # checkout or installed copy

PAPER_PARAMS = {
    "bank_depth": "number of tree levels the bank uses (1..4)",
    "level": "the single tree level holding all memory (1..4)",
    "fetched": "total fetched parameters (e.g. 18.1e6 or '18.1M')",
    "fetched_units": "sum of per-level multipliers r_l (extra units per memory layer)",
    "bank": "total bank parameters (e.g. 4.6e9 or '4.6B')",
    "fetch_ratio": "fetched / anchor parameters at the fixed runtime budget translate.budget",
}
_TOP = (
    "name",
    "base",
    "overrides",
    "fixed",
    "space",
    "mode",
    "objective",
    "evaluate",
    "n_trials",
    "sampler",
    "pruner",
    "storage",
    "translate",
    "profiles",
    "profile",
    "heartbeat_s",
    "stale_after_s",
    "baselines",
    "protocol",
    "slurm",
)
PROTOCOLS = {  # sweeps/protocol.py
    "frozen": "frozen anchor (A3): memory trained on a trained anchor of the trial's shape and seed, trained once",
    "cotrain": "co-training as the base says (train.mode=scratch: A4, anchor and memory from scratch together)",
}
SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
}
SKELETON = (
    "memory.type=none",
    "memory.levels=[]",
    "train.mode=anchor",
    "train.init_from=null",  # anchor only
    "optim.memory_lr_scale=[]",
)
_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def parse_count(value: Any, key: str) -> float:
    """12e6, '12e6', '18.1M', '4.6B' -> float."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a parameter count, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([KMBGT]?)\s*", str(value))
    try:
        assert m
        return float(m.group(1)) * _SUFFIX.get(m.group(2), 1.0)
    except (AssertionError, ValueError):
        raise ConfigError(f"{key}: expected a parameter count like 18.1e6 or '18.1M', got {value!r}") from None


@dataclass
class Translate:
    tolerance: float = 0.05  # relative tolerance on requested fetched / bank sizes and on the runtime budget
    budget: Any = "auto"  # fetch_ratio: runtime params (anchor + fetched); auto = the base config's runtime
    memory_type: str = "ffn"  # memory type used when the base has none and a paper param asks for memory
    q: float = 0.25  # default level profile r_{l+1} = q * r_l (the paper's (256, 64, 16) is q = 1/4)
    shape: list[float] | None = None  # explicit per-level weights instead of the geometric profile
    max_layers: int | None = None  # fetch_ratio: largest anchor n_layer tried (default: the base's)


@dataclass
class SweepSpec:
    name: str
    base: str
    path: str = ""
    overrides: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    mode: str = "optuna"
    metric: str = "val/loss"
    direction: str = "minimize"
    evaluate: bool = False
    eval_tasks: list[str] | None = None
    eval_limit: int | None = None
    n_trials: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    out_dir: str = "runs"
    translate: Translate = field(default_factory=Translate)
    heartbeat_s: float = 30.0
    stale_after_s: float = 900.0
    profile: str | None = None
    baselines: list[str] = field(default_factory=list)  # experiment files (resolved paths)
    protocol: str = "frozen"  # frozen (memory on a shared, trained, frozen anchor: A3) | cotrain (the base's mode)
    slurm: dict[str, Any] = field(default_factory=dict)  # job options of `--launcher slurm` (launch/options.py)

    # ---- derived
    @property
    def eval_memory(self) -> str | None:
        """The memory mode an eval.* objective reads, or None for a training metric."""
        return self.metric.split(".")[1] if self.metric.startswith("eval.") else None

    @property
    def needs_eval(self) -> bool:
        return self.evaluate or self.eval_memory is not None

    @property
    def runs_dir(self) -> Path:
        """Trial run directories live here: <out_dir>/sweeps/<name>/<trial name>/ (what `hmem report` reads)."""
        return Path(self.out_dir) / "sweeps" / self.name

    @property
    def sweep_dir(self) -> Path:
        """Locks, the resolved spec and the last summary: <runs_dir>/_sweep/."""
        return self.runs_dir / "_sweep"

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.runs_dir / "study.journal")

    def axes_grid(self) -> list[dict[str, Any]]:
        """The grid's points as optuna stores them: one value per axis (a `cases` value is its mapping)."""
        axes = list(self.space)
        points = [dict(zip(axes, combo)) for combo in itertools.product(*(self.space[a] for a in axes))]
        return points[: self.n_trials] if self.n_trials else points

    def grid(self) -> list[dict[str, Any]]:
        """The grid's points as the params each trial applies (`cases` expanded)."""
        return [expand(p) for p in self.axes_grid()]

    def total_trials(self) -> int:
        return len(self.grid()) if self.mode == "grid" else int(self.n_trials or 0)


CASES = "cases"  # the grid axis whose values are mappings of params that vary together


def expand(point: dict[str, Any]) -> dict[str, Any]:
    """A grid point's params: the `cases` axis contributes its mapping's params (so a trial named from them is named
    as if each were an axis of its own)."""
    out: dict[str, Any] = {}
    for k, v in point.items():
        out.update(v if k == CASES else {k: v})
    return out


def trial_name(params: dict[str, Any]) -> str:
    """Deterministic run name from the searched params: readable slug + short hash (order-independent). A key moved
    into retriever.tree is named by its flat name (config.RETRIEVER_FLAT_NAME), so an axis on either name keeps the
    trial names it had."""
    params = {RETRIEVER_FLAT_NAME.get(k, k): v for k, v in params.items()}
    canon = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    h = hashlib.sha1(canon.encode()).hexdigest()[:6]
    parts = []
    for k in sorted(params):
        v = params[k]
        v = ".".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts.append(f"{k.split('.')[-1]}-{v}")
    slug = re.sub(r"[^\w.\-]", "", "_".join(parts))[:80]
    return f"{slug}_{h}" if slug else f"t_{h}"


# ----------------------------------------------------------------------------------------------------------------


def _find(path: str | Path, folder: Path, what: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for cand in (folder / str(path), folder / f"{path}.yaml"):
        if cand.is_file():
            return cand
    hint = did_you_mean(Path(path).stem, [f.stem for f in folder.glob("*.yaml")])
    raise ConfigError(f"{path}: {what} file not found (looked in {folder}){hint}")


def _as_overrides(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_fmt(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(x, str) and "=" in x for x in value):
        return list(value)
    raise ConfigError(f"{key}: expected a mapping of config keys or a list of key=value strings")


def _fmt(v: Any) -> str:
    """A value as an OmegaConf dotlist right-hand side."""
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _merge_profile(a: dict, b: dict) -> dict:
    """A profile replaces overrides / fixed / space wholesale and merges into the small option mappings."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        merge = k in ("objective", "sampler", "pruner", "translate", "evaluate")
        out[k] = {**out[k], **v} if merge and isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_param(name: str, key: str, valid: set[str]) -> None:
    if name in PAPER_PARAMS:
        return
    if "." in name:
        if name not in valid:
            import difflib

            near = difflib.get_close_matches(name, sorted(valid), n=2, cutoff=0.6)
            raise ConfigError(
                f"{key}.{name}: unknown config key" + (f"; did you mean {', '.join(near)}?" if near else "")
            )
        return
    raise ConfigError(
        f"{key}.{name}: unknown parameter; allowed: a config key like train.seed, or {', '.join(PAPER_PARAMS)}"
    )


def _apply_cli(raw: dict, cli: list[str]) -> tuple[dict, list[str]]:
    """key=value from the command line: sweep keys change the spec, other keys become base overrides."""
    extra = []
    for item in cli:
        _check("=" in item, item, "overrides are key=value (e.g. n_trials=4 or train.max_tokens=20000)")
        k, v = item.split("=", 1)
        try:
            val = load_yaml(v, k) if v != "" else None
        except ConfigError:
            val = v
        parts = k.split(".")
        if parts[0] in ("space", "fixed"):
            raw[parts[0]] = {**(raw.get(parts[0]) or {}), k.split(".", 1)[1]: val}
        elif parts[0] in _TOP and parts[0] != "overrides" and len(parts) == 1:
            raw[k] = val
        elif parts[0] in ("objective", "sampler", "pruner", "translate", "evaluate") and len(parts) == 2:
            node = raw.get(parts[0])
            if not isinstance(node, dict):
                short = {"objective": "metric", "evaluate": "enabled"}.get(parts[0], "type")
                node = {short: node} if node is not None else {}
            raw[parts[0]] = {**node, parts[1]: val}
        else:
            extra.append(item)
    return raw, extra


def load_sweep(path: str | Path, cli: list[str] | tuple[str, ...] = (), validate: bool = True) -> SweepSpec:
    """Read and validate a sweep YAML (path or a name in sweeps/), with command-line key=value applied.
    validate=False (`hmem sweep status`): the base experiment is only merged, not validated, so reading a study
    never imports the memory types (torch)."""
    p, raw, profile, extra = _read_raw(path, list(cli))
    spec = _base_spec(raw, p, profile, extra, validate)
    _set_objective(spec, raw)
    _set_trials(spec, raw)
    _set_run_options(spec, raw)
    _set_space(spec, raw)
    return spec


def _read_raw(path: str | Path, cli: list[str]) -> tuple[Path, dict, str | None, list[str]]:
    """The sweep file with its profile (`profile=` on the command line wins) and the command line's sweep keys
    merged in -> (file, mapping, profile, the command line's config overrides)."""
    p = _find(path, SWEEPS_DIR, "sweep")
    raw = load_yaml(p.read_text(), str(p)) or {}
    _check(isinstance(raw, dict), str(p), "the top level must be a mapping")
    profile = raw.pop("profile", None)
    for item in [c for c in cli if c.startswith("profile=")]:
        profile = item.split("=", 1)[1] or None
        cli.remove(item)
    profiles = raw.pop("profiles", None) or {}
    if profile is not None:
        _check(profile in profiles, "profile", f"got {profile!r}; allowed: {', '.join(profiles) or '(none defined)'}")
        raw = _merge_profile(raw, profiles[profile])
    raw, extra = _apply_cli(raw, cli)
    return p, raw, profile, extra


def _base_spec(raw: dict, p: Path, profile: str | None, extra: list[str], validate: bool) -> SweepSpec:
    """The top-level keys checked; name, base, overrides, out_dir, mode and protocol set."""
    unknown = [k for k in raw if k not in _TOP]
    _check(not unknown, unknown[0] if unknown else "", f"unknown sweep key; allowed: {', '.join(_TOP)}")
    _check("base" in raw, "base", "a sweep needs a base experiment (path or name in experiments/)")
    _check(
        bool(raw.get("space")) and isinstance(raw["space"], dict),
        "space",
        "a sweep needs a non-empty mapping of params to search",
    )
    spec = SweepSpec(
        name=str(raw.get("name") or p.stem),
        base=str(_find(raw["base"], EXPERIMENTS_DIR, "experiment")),
        path=str(p),
        profile=profile,
    )
    _check(bool(re.fullmatch(r"[\w.\-]+", spec.name)), "name", "use letters, digits, '._-' only")
    spec.overrides = _as_overrides(raw.get("overrides"), "overrides") + extra
    spec.out_dir = _out_dir(spec, validate)
    spec.mode = str(raw.get("mode", "optuna"))
    spec.protocol = str(raw.get("protocol", "frozen"))
    _check(
        spec.protocol in PROTOCOLS,
        "protocol",
        f"got {spec.protocol!r}; allowed: frozen (memory on a trained, frozen anchor: the paper's A3), cotrain "
        "(train as the base experiment says, e.g. A4 from scratch)",
    )
    _check(spec.mode in ("optuna", "grid"), "mode", f"got {spec.mode!r}; allowed: optuna, grid")
    return spec


def _out_dir(spec: SweepSpec, validate: bool) -> str:
    """The base experiment's out_dir with the sweep's overrides; validate: the merged config is validated too."""
    if not validate:
        return str(merged_value(spec.base, spec.overrides, "out_dir"))
    try:  # validates the base experiment and its overrides
        return load_config(spec.base, spec.overrides).out_dir
    except ConfigError as e:  # memory.type=ffn whose levels the space sizes: check the rest
        try:
            return load_config(spec.base, spec.overrides + list(SKELETON)).out_dir
        except ConfigError:
            raise e from None


def _set_objective(spec: SweepSpec, raw: dict) -> None:
    """objective (metric, direction) and evaluate (enabled, tasks, limit)."""
    obj = raw.get("objective") or {}
    obj = {"metric": obj} if isinstance(obj, str) else obj
    _check(
        isinstance(obj, dict) and set(obj) <= {"metric", "direction"},
        "objective",
        "expected {metric: ..., direction: minimize|maximize}",
    )
    spec.metric = str(obj.get("metric", "val/loss"))
    spec.direction = str(obj.get("direction", "minimize"))
    _check(
        spec.direction in ("minimize", "maximize"),
        "objective.direction",
        f"got {spec.direction!r}; allowed: minimize, maximize",
    )
    if spec.metric.startswith("eval."):
        _check(
            len(spec.metric.split(".", 2)) == 3 and spec.eval_memory in ("fetched", "generic", "none", "blocked"),
            "objective.metric",
            f"eval metrics are eval.<memory>.<name> with memory fetched|generic|none|blocked, "
            f"e.g. eval.fetched.hmem_sk; got {spec.metric!r}",
        )
    ev = raw.get("evaluate", False)
    if isinstance(ev, dict):
        _check(set(ev) <= {"enabled", "tasks", "limit"}, "evaluate", "keys: enabled, tasks, limit")
        spec.evaluate, spec.eval_tasks, spec.eval_limit = (
            bool(ev.get("enabled", True)),
            ev.get("tasks"),
            ev.get("limit"),
        )
    else:
        _check(isinstance(ev, bool), "evaluate", "expected true/false or {enabled, tasks, limit}")
        spec.evaluate = ev


def _set_trials(spec: SweepSpec, raw: dict) -> None:
    """n_trials, the sampler and the pruner with their options."""
    n = raw.get("n_trials")
    _check(n is None or (isinstance(n, int) and n > 0), "n_trials", f"must be a positive integer, got {n!r}")
    _check(n is not None or spec.mode == "grid", "n_trials", "optuna mode needs n_trials (the total over restarts)")
    spec.n_trials = n

    smp = raw.get("sampler") or {}
    smp = {"type": smp} if isinstance(smp, str) else dict(smp)
    spec.sampler, spec.seed = str(smp.pop("type", "tpe")), int(smp.pop("seed", 0))
    _check(spec.sampler in SAMPLERS, "sampler.type", f"got {spec.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    spec.sampler_kwargs = smp
    prn = raw.get("pruner") or {}
    prn = {"type": prn} if isinstance(prn, str) else dict(prn)
    spec.pruner = str(prn.pop("type", "none"))
    _check(spec.pruner in PRUNERS, "pruner.type", f"got {spec.pruner!r}; allowed: {', '.join(PRUNERS)}")
    bad = [k for k in prn if k not in PRUNERS[spec.pruner]]
    _check(
        not bad,
        f"pruner.{bad[0] if bad else ''}",
        f"not an option of the {spec.pruner} pruner; allowed: {', '.join(PRUNERS[spec.pruner]) or '(none)'}",
    )
    spec.pruner_kwargs = prn
    if spec.pruner != "none":
        _check(
            spec.metric == "val/loss" and spec.direction == "minimize",
            "pruner.type",
            "pruning reports val/loss during training: it needs objective.metric=val/loss, direction=minimize; "
            "use pruner: none for eval objectives",
        )
        _check(spec.mode == "optuna", "pruner.type", "grid mode runs every point to the end: use pruner: none")


def _set_run_options(spec: SweepSpec, raw: dict) -> None:
    """storage, translate, baselines, heartbeat_s, slurm and stale_after_s."""
    spec.storage = raw.get("storage")
    if spec.storage is not None:
        s = str(spec.storage)
        _check(
            re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", s) is not None or "://" not in s,
            "storage",
            f"expected a database URL (sqlite:///..., postgresql://...) or a journal file path, got {s!r}",
        )
        spec.storage = s
    tr = raw.get("translate") or {}
    _check(isinstance(tr, dict), "translate", "expected a mapping")
    try:
        spec.translate = Translate(**tr)
    except TypeError:
        raise ConfigError(f"translate: unknown key; allowed: {', '.join(Translate.__dataclass_fields__)}") from None
    t = spec.translate
    _check(0 < t.tolerance < 1, "translate.tolerance", "must be in (0, 1)")
    _check(t.memory_type in routed_types(), "translate.memory_type", f"allowed: {', '.join(routed_types())}")
    _check(t.q > 0, "translate.q", "must be > 0")
    if t.budget != "auto":
        t.budget = parse_count(t.budget, "translate.budget")
    bl = raw.get("baselines") or []
    bl = [bl] if isinstance(bl, str) else bl
    _check(
        isinstance(bl, list) and all(isinstance(b, str) for b in bl),
        "baselines",
        "expected a list of experiments (names in experiments/ or paths), e.g. [101_qs_anchor]",
    )
    spec.baselines = [str(_find(b, EXPERIMENTS_DIR, "baselines: experiment")) for b in bl]
    spec.heartbeat_s = float(raw.get("heartbeat_s", 30.0))
    _check(isinstance(raw.get("slurm") or {}, dict), "slurm", "expected a mapping of job options (partition: ...)")
    spec.slurm = dict(raw.get("slurm") or {})
    spec.stale_after_s = float(raw.get("stale_after_s", 900.0))


def _set_space(spec: SweepSpec, raw: dict) -> None:
    """fixed and space: every param a config key or a paper-language param, each either searched or fixed."""
    valid = set(valid_keys(schema())) | set(RENAMED)  # an old key still works (config.renamed moves it)
    fixed = raw.get("fixed") or {}
    _check(isinstance(fixed, dict), "fixed", "expected a mapping of params")
    for k in fixed:
        _check_param(k, "fixed", valid)
    spec.fixed = dict(fixed)
    for k, dom in raw["space"].items():
        if k == CASES:
            spec.space[k] = _cases(dom, spec, valid)
            continue
        _check_param(k, "space", valid)
        _check(k not in spec.fixed, f"space.{k}", "also set in fixed; a param is either searched or fixed")
        spec.space[k] = _domain(k, dom, spec.mode)
    if CASES in spec.space:
        _narrow_cases(spec)
    for k, v in {**spec.fixed, **{k: d for k, d in spec.space.items() if isinstance(d, list) and k != CASES}}.items():
        _check_paper_values(k, v if isinstance(v, list) and k in spec.space else [v])
    for case in spec.space.get(CASES, []):
        for k, v in case.items():
            _check_paper_values(k, [v])
    if spec.mode == "grid":
        _check(len(spec.grid()) > 0, "space", "the grid is empty")


def _cases(dom: Any, spec: SweepSpec, valid: set[str]) -> list[dict[str, Any]]:
    """space.cases: a grid axis of mappings, each a set of params applied together (e.g. a memory type with its own
    learning rate)."""
    _check(spec.mode == "grid", f"space.{CASES}", "cases are a grid axis (mode: grid); optuna spaces search each param")
    _check(
        isinstance(dom, list) and len(dom) > 0 and all(isinstance(c, dict) and len(c) > 0 for c in dom),
        f"space.{CASES}",
        "expected a list of mappings of params, e.g. [{memory.type: ffn, optim.memory_lr: 3.0e-3}, ...]",
    )
    for c in dom:
        for k in c:
            _check_param(k, f"space.{CASES}", valid)
    return [dict(c) for c in dom]


def _narrow_cases(spec: SweepSpec) -> None:
    """A param set both by the cases and by `fixed` or an axis of its own (e.g. `space.memory.type=[lora,kv]` on the
    command line) selects: only the cases whose value is among the fixed or axis values stay. A fixed param leaves
    the cases (fixed supplies it); an axis is folded into the cases (a case without the param runs once per axis
    value), so a case's other params stay paired with its own value instead of being crossed with every value of
    the axis. When no case matches, the cases axis is dropped and the axis runs with the base's settings."""
    cases = spec.space[CASES]
    folded: dict[str, list[Any]] = {}
    for k in sorted({k for c in cases for k in c} & (set(spec.fixed) | set(spec.space) - {CASES})):
        if k in spec.fixed:
            cases = [{x: v for x, v in c.items() if x != k} for c in cases if k not in c or c[k] == spec.fixed[k]]
            continue
        allowed = spec.space[k]
        cases = [c for c in cases if k not in c or c[k] in allowed]
        cases = [c if k in c else {**c, k: v} for c in cases for v in ([None] if k in c else allowed)]
        folded[k] = allowed
    kept: list[dict[str, Any]] = []
    for c in cases:
        if c and c not in kept:
            kept.append(c)
    if kept:
        spec.space[CASES] = kept
        for k in folded:
            del spec.space[k]  # the cases carry it now
    else:
        del spec.space[CASES]


def _domain(k: str, dom: Any, mode: str) -> Any:
    key = f"space.{k}"
    if isinstance(dom, dict) and "values" in dom:
        dom = dom["values"]
    if mode == "grid":
        _check(isinstance(dom, list) and len(dom) > 0, key, "grid mode needs a non-empty list of values per axis")
        return dom
    if isinstance(dom, list):
        _check(len(dom) > 0, key, "needs at least one choice")
        return {"type": "categorical", "choices": dom}
    _check(
        isinstance(dom, dict) and dom.get("type") in ("int", "float", "categorical"),
        key,
        "expected a list of choices or {type: int|float|categorical, ...}",
    )
    if dom["type"] == "categorical":
        _check(isinstance(dom.get("choices"), list) and dom["choices"], key, "categorical needs choices: [...]")
        return dom
    _check(set(dom) <= {"type", "low", "high", "step", "log"}, key, "int/float take low, high, step, log")
    _check("low" in dom and "high" in dom, key, f"{dom['type']} needs low and high")
    lo, hi = parse_count(dom["low"], f"{key}.low"), parse_count(dom["high"], f"{key}.high")
    _check(lo <= hi, key, f"low ({lo}) must be <= high ({hi})")
    _check(not dom.get("log") or lo > 0, key, "log scale needs low > 0")
    return {**dom, "low": lo, "high": hi}


def _check_paper_values(k: str, values: list[Any]) -> None:
    for v in values:
        if k in ("bank_depth", "level"):
            _check(isinstance(v, int) and 1 <= v <= 4, k, f"must be an integer in 1..4, got {v!r}")
        elif k in ("fetched", "bank", "fetched_units", "fetch_ratio"):
            _check(parse_count(v, k) >= 0, k, f"must be >= 0, got {v!r}")
