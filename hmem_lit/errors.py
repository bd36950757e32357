"""The suite's two user-facing errors (the lowest layer: every module may import it).

ConfigError: bad input (a config key, a file, a flag): one line naming it and the fix; `hmem` exits with status 2.
RunError: a run that cannot go on (diverged, held by another process): one line, exit status 1.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad configuration value: the message is one line naming the key and what is allowed."""


class RunError(RuntimeError):
    """A run that cannot go on (diverged, held by another process): one line, exit status 1, no traceback."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError("<key>: <msg>") unless `cond` (the config sections' validation)."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def one_of(value: Any, allowed: list[str] | tuple[str, ...], key: str) -> None:
    check(value in allowed, key, f"got {value!r}; allowed: {', '.join(map(str, allowed))}")


def did_you_mean(name: str, candidates: Any, n: int = 3, cutoff: float = 0.6) -> str:
    """'; did you mean a, b?' naming only the near matches among `candidates` (empty when none is near)."""
    import difflib

    near = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(near)}?" if near else ""
