"""Copies the top-level registry.yaml into the priorswap package when a wheel is built."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRegistry(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "priorswap" / "registry.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).parent / "registry.yaml", target)


setup(cmdclass={"build_py": BuildWithRegistry})
