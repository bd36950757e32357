"""Launchers: where a verb's work runs. `--launcher local` (the default) runs it in this process, as always;
`--launcher slurm` submits it to a Slurm cluster through submitit (`pip install 'hmem_lit[slurm]'`) and returns
(or waits, with --wait). The Slurm code lives only here, read by the CLI verbs:

    options.py   SlurmOptions: the flags, a --slurm-config YAML, a sweep's slurm: section; checked
    cluster.py   the cluster through its commands: scontrol ping, sinfo, squeue / sacct job states
    submit.py    submitit executors, one job or a job array, the jobs.jsonl record, --wait
    jobs.py      what runs on the allocation: train (requeue at the time limit), any verb; the requeue flag
    verbs.py     train / eval / data prepare: checks, then the submission
    (sweeps: hmem_lit.sweeps.slurm, the worker job array built on these; launch never imports sweeps or cli)

Guide: docs/cluster.md.
"""

from hmem_lit.launch.options import LAUNCHERS, SlurmOptions, add_args, check_local

__all__ = ["LAUNCHERS", "SlurmOptions", "add_args", "check_local"]
