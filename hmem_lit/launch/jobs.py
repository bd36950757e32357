"""What runs inside a Slurm allocation: picklable callables that submitit sends (`TrainJob`, `CliJob`; sweep
workers: `hmem_lit.sweeps.slurm`), and the time-limit requeue.

Requeue at a step boundary. Slurm sends the time-limit signal (`--signal=USR2@<signal_delay_s>`, submitit's) to
every task. Lightning's own handler for this (SLURMEnvironment(auto_requeue=True), SIGUSR1) saves an hpc_ckpt
from inside the signal handler, wherever the step happens to be, and resumes it only when fit gets no ckpt_path:
it would bypass the run directory's checksummed checkpoints/last.ckpt and its metrics truncation. So the job
takes the signal itself: the handler only sets a flag; `RequeueAtStep` agrees on it across ranks after an
optimiser step, saves checkpoints/last.ckpt through the run's AtomicCheckpoint, and at the next batch's start
(after that step's metrics and validation are written) commits it and raises `Requeue`. The job then hands over
to submitit's handler, which runs `checkpoint()` (the same job again) and requeues with `scontrol requeue`. The
next allocation runs `hmem train`'s ordinary resume: bit-identical to an uninterrupted run.
Lightning's SLURMEnvironment is still what gives every task its rank, world size and main address.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import Callback

from hmem_lit import console
from hmem_lit.errors import ConfigError, RunError
from hmem_lit.launch import cluster


class Requeue(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt, not an error
    """Raised at a step boundary once the checkpoint is committed; a BaseException, so no `except Exception`
    (a sweep trial's error handling, say) records it as a failure."""


_STATE: dict[str, Any] = {"requested": False, "signum": None, "submitit_handler": None}


def install_requeue_handler() -> None:
    """Take the time-limit signal from submitit's handler (kept, to requeue with later): it now only sets a flag."""
    from submitit import JobEnvironment

    signum = JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    _STATE.update(signum=signum, submitit_handler=signal.getsignal(signum), requested=False)

    def flag(sig: int, frame: Any) -> None:
        print(f"[hmem] {signal.Signals(sig).name}: checkpoint at the next step, then requeue", flush=True)
        _STATE["requested"] = True

    signal.signal(signum, flag)


def requested() -> bool:
    return bool(_STATE["requested"])


def requeue_now() -> None:
    """Requeue this job through submitit (global rank 0 runs `scontrol requeue`, every task exits)."""
    handler = _STATE["submitit_handler"]
    if callable(handler):
        handler(_STATE["signum"], None)  # rank 0: checkpoint() + scontrol requeue + sys.exit; others return
    sys.exit(-1)


def check_requeue() -> None:
    """Between a sweep worker's trials (nothing to checkpoint): requeue now if the time-limit signal came."""
    if requested():
        raise Requeue("signalled between trials")


def job_callbacks() -> list[Callback]:
    """Callbacks for train() in this process: the step-boundary requeue when a Slurm job installed its handler."""
    return [RequeueAtStep()] if _STATE["signum"] is not None else []


class RequeueAtStep(Callback):
    """On the time-limit signal: save checkpoints/last.ckpt after an optimiser step (all ranks agree on which),
    commit it at the next batch's start and raise Requeue (see the module docstring)."""

    def __init__(self) -> None:
        self.step_at_start = -1
        self.saved = False

    @staticmethod
    def _atomic(trainer: Any) -> Any:
        from hmem_lit.callbacks import AtomicCheckpoint

        return next(c for c in trainer.callbacks if isinstance(c, AtomicCheckpoint))

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if self.saved:
            self._atomic(trainer).commit(trainer)  # AtomicCheckpoint (earlier in the list) did it already; idempotent
            raise Requeue(f"checkpoint at step {trainer.global_step} committed")
        self.step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step_at_start:  # inside a gradient accumulation: no optimiser step yet
            return
        if trainer.strategy.reduce_boolean_decision(requested(), all=False):  # one rank signalled: all stop here
            self._atomic(trainer).save(trainer, commit=False)
            self.saved = True


def run_reporting(fn: Callable[[], int]) -> int:
    """Run a job body as the CLI would: bad input and stopped runs are one line and an exit status, and the suite's
    messages at the submitter's verbosity (HMEM_VERBOSITY, exported by sbatch) on the job's stderr."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.setup()
    try:
        return fn()
    except ConfigError as e:
        print(f"hmem: error: {e}", file=sys.stderr, flush=True)
        return 2
    except RunError as e:
        print(f"hmem: error: {e}", file=sys.stderr, flush=True)
        return 1


class Job:
    """submitit calls the object; on a preemption or time-limit signal it calls `checkpoint()` and requeues what
    that returns: the same job, which resumes from what the run directory holds."""

    def __call__(self) -> int:
        raise NotImplementedError

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class TrainJob(Job):
    """`hmem train EXP key=value ...` on every task of the job (Lightning's SLURMEnvironment gives the ranks)."""

    def __init__(self, experiment: str | None, overrides: list[str], force: bool = False):
        self.experiment, self.overrides, self.force = experiment, list(overrides), force

    def __call__(self) -> int:
        install_requeue_handler()  # first: a signal during the imports below is kept for the first step
        from hmem_lit.config import load_config
        from hmem_lit.train import train

        # --force wipes the run once: a requeued allocation resumes what the first one trained
        force = self.force and cluster.restart_count() == 0

        def body() -> int:
            train(load_config(self.experiment, self.overrides), force=force, extra_callbacks=job_callbacks())
            return 0

        try:
            return run_reporting(body)
        except Requeue as e:
            print(f"[hmem] {e}; requeueing job {cluster.current_job()}", flush=True)
            requeue_now()
            return 0  # not reached


class CliJob(Job):
    """Any other verb (`hmem eval ...`, `hmem data prepare ...`) run as on the command line by `entry` (the CLI's
    main, passed in by the CLI: this layer does not import it); requeued by submitit on preemption, it starts
    again (evaluation) or goes on from its last finished stage (data preparation)."""

    def __init__(self, entry: Callable[[list[str]], int], argv: list[str]):
        self.entry, self.argv = entry, list(argv)

    def __call__(self) -> int:
        return self.entry(self.argv)
