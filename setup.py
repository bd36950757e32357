"""Build step: ship the top-level experiments/, sweeps/ and analysis/ YAMLs inside the package.

Metadata and everything else live in pyproject.toml. package-data can only name files inside a package folder,
and those three folders stay at the checkout's top level (docs and tests name their paths), so build_py copies
them into the built package as `hmem_lit/_shipped/<kind>/*.yaml`, where `hmem_lit.resources.shipped_dir` finds
them outside a checkout. Editable installs skip the copy: they run from the checkout and read its folders.
MANIFEST.in puts the folders in the sdist so a wheel built from the sdist ships them too.
"""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = runpy.run_path(str(HERE / "hmem_lit" / "resources.py"))["KINDS"]  # experiments, sweeps, analysis


class build_py_shipped(build_py):  # noqa: N801 (setuptools command naming)
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for kind in SHIPPED:
            files = sorted((HERE / kind).glob("*.yaml"))
            if not files:
                raise SystemExit(f"setup.py: no {kind}/*.yaml to ship (building outside the source tree?)")
            dst = Path(self.build_lib) / "hmem_lit" / "_shipped" / kind
            shutil.rmtree(dst, ignore_errors=True)  # a reused build/ keeps no file deleted from the checkout
            self.mkpath(str(dst))
            for f in files:
                self.copy_file(str(f), str(dst / f.name))


setup(cmdclass={"build_py": build_py_shipped})
