"""The `stl-tune` command lines that tests start as processes, built one way."""

from __future__ import annotations

import sys
from pathlib import Path

STL_TUNE = [str(Path(sys.executable).with_name("stl-tune"))]  # the installed console script


def stl_tune(command: str, *args: str, gpus: str | None = "none", **options: object) -> list[str]:
    """`stl-tune COMMAND ARGS --gpus none --option value ...`: keyword options in order, their
    underscores as dashes (`data_dir=d` -> `--data-dir d`); gpus=None leaves --gpus out."""
    cmd = [*STL_TUNE, command, *args]
    if gpus is not None:
        cmd += ["--gpus", gpus]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd
