"""Fault injection for the kill tests: `HMEM_KILL_AT=<point>[@<n>]` SIGKILLs this process at the n-th time
(default the first) it passes the named write point.

The points sit between the writes whose order the guarantees depend on (checkpoint written / committed, metrics
record appended, weights written, results written); tests run a child process with the variable set, then rerun
it without and compare every output file with an uninterrupted run's. Unset (always, outside tests) a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def point(name: str) -> None:
    want = os.environ.get("HMEM_KILL_AT")
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
