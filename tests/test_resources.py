"""Shipped experiments, sweeps and figure specs: one search path (hmem_lit.resources), the checkout's folders in a
checkout, the copy inside the package otherwise; the wheel carries that copy. `.ci/check_install.sh` checks a
real non-editable install from outside the checkout."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hmem_lit import resources
from hmem_lit.cli import main

from .conftest import ROOT


def test_checkout_folders_are_the_search_path_in_a_checkout():
    assert resources.checkout_root() == ROOT
    for kind in resources.KINDS:
        assert resources.shipped_dir(kind) == ROOT / kind
        assert sorted(resources.shipped_dir(kind).glob("*.yaml")), kind
    assert resources.work_root() == Path.cwd()  # outputs go where the command runs, not into the checkout
    with pytest.raises(ValueError):
        resources.shipped_dir("benchmarks")


def test_every_module_reads_the_one_search_path():
    from hmem_lit import cli, quickstart
    from hmem_lit.analysis import report, sweep
    from hmem_lit.sweeps import spec

    assert cli.EXPERIMENTS_DIR == spec.EXPERIMENTS_DIR == quickstart.EXPERIMENTS == resources.shipped_dir("experiments")
    assert cli.SWEEPS_DIR == spec.SWEEPS_DIR == sweep.SWEEPS_DIR == resources.shipped_dir("sweeps")
    assert report.SPEC_DIR == resources.shipped_dir("analysis")


def test_installed_layout_uses_the_packaged_copy(tmp_path, monkeypatch):
    """A package folder whose parent is not a checkout (site-packages): the copy in hmem_lit/_shipped/."""
    pkg = tmp_path / "site-packages" / "hmem_lit"
    (pkg / "_shipped" / "experiments").mkdir(parents=True)
    (tmp_path / "site-packages" / "experiments").mkdir()  # an unrelated folder of that name is not a checkout
    monkeypatch.setattr(resources, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(resources, "SHIPPED_DIR", pkg / "_shipped")
    monkeypatch.chdir(tmp_path)
    assert resources.checkout_root() is None
    for kind in resources.KINDS:
        assert resources.shipped_dir(kind) == pkg / "_shipped" / kind
    assert resources.work_root() == tmp_path  # outputs go to the working directory, never into the package


def test_bench_outside_a_checkout_is_one_line_exit_2(monkeypatch, capsys):
    from hmem_lit import cli

    monkeypatch.setattr(cli, "checkout_root", lambda: None)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("hmem: error: ") and "source checkout" in err, err


def test_sdist_carries_the_shipped_folders():
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "setup.py" in manifest
    for kind in resources.KINDS:
        assert f"{kind}/*.yaml" in manifest, kind


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build offline")
def test_wheel_carries_every_shipped_yaml(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, src / name)
    for d in ("hmem_lit", *resources.KINDS):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "_shipped", "generated"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path / "wheel"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "wheel").glob("hmem_lit-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for kind in resources.KINDS:
        want = {f"hmem_lit/_shipped/{kind}/{p.name}" for p in (ROOT / kind).glob("*.yaml")}
        assert want and want <= names, kind
    assert {n for n in names if "/_shipped/" in n} == {
        f"hmem_lit/_shipped/{k}/{p.name}" for k in resources.KINDS for p in (ROOT / k).glob("*.yaml")
    }
    assert not any(n.startswith(("benchmarks/", "tests/", "experiments/")) for n in names)
    assert "hmem_lit/resources.py" in names
