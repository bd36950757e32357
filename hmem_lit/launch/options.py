"""What a Slurm job asks for: `SlurmOptions`, read from (later wins) its defaults, a YAML file (`--slurm-config FILE`
or $HMEM_SLURM_CONFIG), a sweep's `slurm:` section, and the command-line flags of `--launcher slurm`.

Every value is checked here, before anything talks to Slurm or creates a file: a bad one is one ConfigError line
naming the flag (or the file's key) and what is allowed.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hmem_lit.errors import ConfigError

LAUNCHERS = ("local", "slurm")
ENV_CONFIG = "HMEM_SLURM_CONFIG"


@dataclass
class SlurmOptions:
    """One job's (or one job array's) resources. Field names are sbatch's, with '_' for '-'."""

    partition: str | None = None  # None: the cluster's default partition
    time: int = 60  # wall-time limit in minutes (flags and files also take Slurm's D-HH:MM:SS forms)
    nodes: int = 1  # hmem train only: nodes of the one job (Lightning's num_nodes)
    gpus_per_node: int = 0  # 0: a CPU job (train.devices tasks per node); G > 0: G tasks, one GPU each
    cpus_per_task: int | None = None  # None: Slurm's default (1); sweep workers also get this many torch threads
    mem: str | None = None  # per node, sbatch's form: 16G, 500M
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = 120  # the time-limit signal (USR2) comes this long before the limit: checkpoint + requeue
    max_requeues: int = 3  # time-limit requeues of one job before it is left to end (submitit's max_num_timeout)
    array_parallelism: int | None = None  # sweep workers running at once (None: all of them)
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option: {constraint: a100, exclusive: true}
    setup: list[str] = field(default_factory=list)  # shell lines before the job: module load ..., source venv
    log_dir: str | None = None  # None: <out_dir>/slurm/<verb>/ (sweeps: runs/sweeps/<name>/_sweep/slurm/)
    wait: bool = False  # block until the job(s) end; exit status 0 only if every job completed

    def check(self) -> SlurmOptions:
        _positive(self.time, "--time", "minutes")
        _positive(self.nodes, "--nodes", "nodes")
        _at_least(self.gpus_per_node, 0, "--gpus-per-node")
        if self.cpus_per_task is not None:
            _positive(self.cpus_per_task, "--cpus-per-task", "CPUs")
        _at_least(self.signal_delay_s, 0, "--signal-delay")
        _at_least(self.max_requeues, 0, "slurm.max_requeues")
        if self.array_parallelism is not None:
            _positive(self.array_parallelism, "--array-parallelism", "jobs")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(self.mem), re.IGNORECASE):
            raise ConfigError(f"--mem: got {self.mem!r}; use sbatch's form, e.g. 16G or 500M")
        for name in ("partition", "account", "qos"):
            v = getattr(self, name)
            if v is not None and not re.fullmatch(r"[\w.\-]+", str(v)):
                raise ConfigError(f"--{name}: got {v!r}; a name of letters, digits, '._-'")
        for k in self.sbatch:
            if not re.fullmatch(r"[a-z][a-z0-9_\-]*", k):
                raise ConfigError(
                    f"--sbatch {k}: not an sbatch option name (e.g. --sbatch constraint=a100, --sbatch exclusive)"
                )
        if self.signal_delay_s >= self.time * 60:
            raise ConfigError(
                f"--signal-delay: {self.signal_delay_s} s is not shorter than --time ({self.time} min); the job "
                "would be signalled to checkpoint before it starts"
            )
        return self


def _positive(v: Any, flag: str, what: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{flag}: must be a whole number of {what} >= 1, got {v!r}")


def _at_least(v: Any, low: int, flag: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ConfigError(f"{flag}: must be an integer >= {low}, got {v!r}")


def parse_time(value: Any, flag: str = "--time") -> int:
    """Minutes from an int or Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    s = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ConfigError(f"{flag}: got {value!r}; give minutes (90) or Slurm's D-HH:MM:SS form (1-00:00:00, 4:00:00)")
    days, b, c = (int(x) if x is not None else None for x in (m.group(1), m.group(3), m.group(4)))
    a = int(m.group(2))
    if days is not None:  # D-H[:M[:S]]
        secs = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        secs = a * 3600 + (b or 0) * 60 + c
    elif b is not None:  # M:S
        secs = a * 60 + b
    else:  # M
        secs = a * 60
    return -(-secs // 60)


def add_args(p: argparse.ArgumentParser, nodes: bool = False, workers: bool = False) -> None:
    """The `--launcher` flag and the Slurm flags of a verb (default None: a flag not given leaves the file's value)."""
    g = p.add_argument_group("launcher (docs/cluster.md)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local", help="local (default) or slurm: submit a job")
    g.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's default)")
    g.add_argument("--time", default=None, help="slurm: wall-time limit, minutes or D-HH:MM:SS (default 60)")
    if nodes:
        g.add_argument("--nodes", type=int, default=None, help="slurm: nodes of the job (default 1)")
    g.add_argument("--gpus-per-node", type=int, default=None, help="slurm: GPUs per node, one task each (default 0)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task")
    g.add_argument("--mem", default=None, help="slurm: memory per node, e.g. 64G")
    g.add_argument("--account", default=None, help="slurm: account to charge")
    g.add_argument("--qos", default=None, help="slurm: quality of service")
    g.add_argument("--signal-delay", type=int, default=None, help="slurm: seconds before the limit to checkpoint")
    if workers:
        g.add_argument("--array-parallelism", type=int, default=None, help="slurm: workers running at once")
    g.add_argument(
        "--sbatch",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option, repeatable (--sbatch constraint=a100 --sbatch exclusive)",
    )
    g.add_argument("--slurm-config", default=None, metavar="FILE", help=f"slurm: YAML of these options (${ENV_CONFIG})")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the job(s) to end; exit 0 if all completed")


_FLAGS = {  # argparse dest -> SlurmOptions field
    "partition": "partition",
    "time": "time",
    "nodes": "nodes",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem",
    "account": "account",
    "qos": "qos",
    "signal_delay": "signal_delay_s",
    "array_parallelism": "array_parallelism",
}


def from_args(a: argparse.Namespace, section: dict[str, Any] | None = None, where: str = "slurm") -> SlurmOptions:
    """defaults < the YAML file < `section` (a sweep's slurm:) < the flags; checked."""
    values: dict[str, Any] = {}
    path = getattr(a, "slurm_config", None) or os.environ.get(ENV_CONFIG) or None
    if path:
        values.update(_read_file(Path(path)))
    if section:
        values.update(_known(section, where))
    for dest, name in _FLAGS.items():
        v = getattr(a, dest, None)
        if v is not None:
            values[name] = v
    extra = dict(values.pop("sbatch", None) or {})
    for item in getattr(a, "sbatch", None) or []:
        k, eq, v = item.partition("=")
        extra[k.strip().lstrip("-")] = v if eq else True  # a bare KEY is a flag: --sbatch exclusive
    values["time"] = parse_time(values.get("time", 60), "--time")
    opts = SlurmOptions(**values, sbatch={str(k): v if v is True else str(v) for k, v in extra.items()})
    opts.wait = bool(getattr(a, "wait", False))
    return opts.check()


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--slurm-config: {path} not found (or unset ${ENV_CONFIG})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--slurm-config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--slurm-config: {path} must hold a mapping of options (partition: ..., time: ...)")
    return _known(raw, str(path))


def _known(raw: dict[str, Any], where: str) -> dict[str, Any]:
    valid = [f.name for f in fields(SlurmOptions) if f.name != "wait"]
    bad = [k for k in raw if k not in valid]
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(valid)}")
    if "sbatch" in raw and not isinstance(raw["sbatch"] or {}, dict):
        raise ConfigError(f"{where}: sbatch must be a mapping of sbatch options (constraint: a100)")
    if "setup" in raw and not isinstance(raw["setup"] or [], list):
        raise ConfigError(f"{where}: setup must be a list of shell lines")
    return dict(raw)


def check_local(a: argparse.Namespace) -> None:
    """Slurm flags without `--launcher slurm` would be ignored: refuse them instead."""
    given = [f"--{d.replace('_', '-')}" for d in _FLAGS if getattr(a, d, None) is not None]
    given += [f"--{d.replace('_', '-')}" for d in ("sbatch", "slurm_config") if getattr(a, d, None)]
    given += ["--wait"] if getattr(a, "wait", False) else []
    if given:
        raise ConfigError(f"{given[0]}: an option of --launcher slurm; add --launcher slurm or drop it")


def strip_launcher_args(argv: list[str], nodes: bool = False, workers: bool = False) -> list[str]:
    """argv without the launcher's flags: what the job runs on the allocation (as `--launcher local`)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_args(p, nodes=nodes, workers=workers)
    _, rest = p.parse_known_args(argv)
    return rest
