"""The data a study trains on, before any trial: fetched once, every folder image decoded once,
checked against the study, described.

A data error found here (an unreadable image, an empty class folder, a missing download) stops the
run in one line, before any worker starts, rather than failing every trial the same way.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from rich.console import Console

from stl_tune import config
from stl_tune.config import TrainConfig
from stl_tune.errors import StudyError
from stl_tune.search.spec.space import StudySpec


def ready_data(spec: StudySpec, data_dir: Path | None, source: str) -> str:
    """Ready the data here, once, rather than in every worker at the same time (stl_tune.data's
    prepare: STL-10 downloaded when missing; a folder dataset's every image decoded into the decode
    cache, with a progress bar on the console for large folders, so the trials read the cache), check
    the study against the data (check_against_data) and say what data it is: the line to print.
    data_dir: the --data-dir of run, worker and confirm (an absolute path), or None."""
    from stl_tune import data  # torch and torchvision: imported only when a study is about to run

    overrides = {"data.dir": str(data_dir)} if data_dir is not None else {}
    data_cfg = config.from_dict(None, {**spec.fixed, **overrides}).data
    line = data.prepare(data_cfg, progress=Console())
    check_against_data(spec, data_dir, source=source)
    return f"data: {line}"


def check_against_data(spec: StudySpec, data_dir: str | Path | None = None, source: str = "study") -> None:
    """A StudyError unless every trial's batch fits its training images (the trainer needs one full
    batch per epoch): the largest batch size any trial can draw (`fixed`, or a parameter's highest
    reachable value) against the fewest training images a trial can have.

    The data config is the study's (`fixed` over the defaults) with `data_dir` as data.dir when given
    (the --data-dir of run and worker). A searched data.* parameter counts at its worst: every choice
    of a categorical, a number at its high bound (a larger validation or test fraction leaves fewer
    training images). Call it once the data is in place (after ensure_downloaded): it reads label
    files and lists folders, decodes no image and downloads nothing.
    """
    from stl_tune import data

    base = config.from_dict(None, spec.fixed)
    searched = [
        [(p.path, v) for v in (p.choices if p.kind == "categorical" else [p.high])]
        for p in spec.params
        if p.path.startswith("data.")
    ]
    host = [("data.dir", str(data_dir))] if data_dir is not None else []  # after the search, as in trials
    fewest = None
    for values in itertools.product(*searched):
        cfg = copy.deepcopy(base)
        for path, value in (*values, *host):
            config.set_path(cfg, path, value)
        n = data.train_size(cfg.data)
        if fewest is None or n < fewest[0]:
            fewest = (n, cfg.data)
    n, data_cfg = fewest
    batch, fix = _largest_batch(spec, base)
    if batch > n:
        raise StudyError(
            f"{source}: optim.batch_size can reach {batch} but a trial has only {n:,} training "
            f"images ({data.describe(data_cfg)}); {fix} (at most {n:,})"
        )


def _largest_batch(spec: StudySpec, base: TrainConfig) -> tuple[int, str]:
    """The largest optim.batch_size a trial can draw, and where to lower it."""
    fix = "lower fixed.optim.batch_size" if "optim.batch_size" in spec.fixed else "set a lower one in `fixed`"
    largest = (base.optim.batch_size, fix)
    for p in spec.params:
        if p.path != "optim.batch_size":
            continue
        categorical = p.kind == "categorical"
        fix = f"drop the larger search_space.{p.name}.choices" if categorical else f"lower search_space.{p.name}.high"
        largest = max(largest, (p.largest(), fix), key=lambda v: v[0])
    return largest
