"""Every shipped study file loads, names the command that runs it, and samples valid configs whose
conditional parameters appear exactly when their `when` holds."""

import random
from pathlib import Path

import optuna
import pytest

from stl_tune import config
from stl_tune.search.spec.plugins import make_pruner, make_sampler
from stl_tune.search.spec.space import default_study_file, load_study_file, suggest_config

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


def sample(spec, n: int = 20) -> list[tuple[optuna.trial.FrozenTrial, config.TrainConfig]]:
    """n trials through the file's own sampler, on Optuna's in-memory storage."""
    study = optuna.create_study(sampler=make_sampler(spec), pruner=make_pruner(spec), direction=spec.direction)
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = suggest_config(trial, spec)
        study.tell(trial, random.Random(trial.number).random())  # any values: TPE models kick in
        out.append((study.trials[-1], cfg))
    return out


def test_studies_exist():
    assert {p.name for p in STUDIES} >= {"seed.yaml", "smoke.yaml"}
    assert default_study_file().resolve() == (Path(__file__).parent.parent / "studies/seed.yaml").resolve()


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_study(path):
    spec = load_study_file(path)
    assert f"stl-tune run --study studies/{path.name}" in path.read_text().split("\nname:")[0]
    suggested = set()
    for trial, cfg in sample(spec):
        assert config.validate(cfg) is cfg
        assert config.from_dict(config.to_dict(cfg)) == cfg  # what the objective stores reloads
        for path_, value in spec.fixed.items():
            assert config.get(cfg, path_) == value
        for p in spec.params:
            assert (p.name in trial.params) == p.applies(cfg), p.name
            if p.name in trial.params:
                assert config.get(cfg, p.path) == config.coerce(p.path, trial.params[p.name])
        suggested |= set(trial.params)
    assert suggested == {p.name for p in spec.params}  # no parameter is dead


def test_seed_is_the_full_gpu_search():
    spec = load_study_file(Path(__file__).parent.parent / "studies/seed.yaml")
    assert spec.fixed["optim.epochs"] == 200 and spec.pruner["name"] == "successive_halving"
    assert spec.objective == "last5_val_acc" and spec.sampler["name"] == "prior"
    assert spec.sampler["eta"] == spec.pruner["reduction_factor"]  # the sampler reads the pruner's rungs
    # trial 0 is exactly the known recipe: each searched key that applies to it holds its default
    from stl_tune import config
    from stl_tune.search.spec.warmstart import params_of

    recipe = config.from_dict(None, spec.fixed)
    assert set(params_of(recipe, spec)) == {p.name for p in spec.params if p.applies(recipe)}
    for _, cfg in sample(spec, 12):
        lr_range = (3e-4, 3e-3) if cfg.optim.name == "adamw" else (0.01, 0.4)
        assert lr_range[0] <= cfg.optim.lr <= lr_range[1]


def test_smoke_is_tiny():
    spec = load_study_file(Path(__file__).parent.parent / "studies/smoke.yaml")
    for _, cfg in sample(spec, 8):
        assert cfg.model.width <= 8 and cfg.model.blocks == [1, 1, 1, 1]
        assert cfg.data.image_size <= 24 and cfg.optim.epochs <= 3 and cfg.data.dir == "data/fake"
