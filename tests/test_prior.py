"""The prior sampler (search/spec/prior.py) on the shipped search space: it draws around the known recipe
first, still covers the space when the recipe is a bad guess, follows its seed, and runs on several
workers of one study."""

import math
import statistics

import optuna
import pytest

from stl_tune import config
from stl_tune.search.spec import plugins, warmstart
from stl_tune.search.spec.prior import PriorBandSampler, recipe_params
from stl_tune.search.spec.space import StudyError, StudySpec, load_study_file, suggest_config

SEED_STUDY = load_study_file("studies/seed.yaml")
NUMERIC = ("model.drop_path", "lr_adamw", "wd_adamw", "augment.mix_epochs", "smoothing.start")


def prior_spec(**options) -> StudySpec:
    """studies/seed.yaml with its sampler's options changed."""
    d = SEED_STUDY.to_dict()
    d["sampler"] = {**SEED_STUDY.sampler, **options}
    return StudySpec.from_dict(d)


def unit(spec: StudySpec, name: str, value: float) -> float:
    """A parameter's value on its [0, 1] scale (log where the space is log)."""
    p = next(p for p in spec.params if p.name == name)
    lo, hi, x = (math.log(p.low), math.log(p.high), math.log(value)) if p.log else (p.low, p.high, value)
    return (x - lo) / (hi - lo)


def run(
    spec: StudySpec, n: int, value=lambda params: 0.0, sampler=None, recipe: bool = True, report: bool = True
) -> optuna.Study:
    """n trials of `spec` (the known recipe first), each reporting `value` of its params at epochs 1-3
    (the evidence a pruner's rungs leave; not with report=False) and ending with it."""
    study = optuna.create_study(direction="maximize", sampler=sampler or plugins.make_sampler(spec))
    if recipe:
        warmstart.enqueue_known_recipe(study, spec)
    for _ in range(n):
        trial = study.ask()
        suggest_config(trial, spec)
        v = value(trial.params)
        for step in (1, 2, 3) if report else ():
            trial.report(v, step)
        study.tell(trial, v)
    return study


def distance(spec: StudySpec, trials, centre: dict) -> float:
    """Mean distance, on the [0, 1] scales, of the trials' numeric parameters to `centre`'s."""
    return statistics.fmean(
        abs(unit(spec, k, t.params[k]) - unit(spec, k, centre[k])) for t in trials for k in NUMERIC if k in t.params
    )


def test_study_file_names_the_sampler_and_its_options():
    sampler = plugins.make_sampler(prior_spec(confidence=0.9), worker=2)
    assert isinstance(sampler, PriorBandSampler) and sampler.confidence == 0.9
    with pytest.raises(StudyError, match="unknown option for prior"):
        prior_spec(confidense=0.9)
    with pytest.raises(StudyError, match="confidence must be in"):
        plugins.make_sampler(prior_spec(confidence=1.5))


def test_the_default_search_draws_around_the_known_recipe():
    """seed.yaml's sampler, as shipped: before any evidence, half the draws come from the prior, so
    the recipe's categorical values come up more often than uniformly (a choice of n: 1/n)."""
    assert isinstance(plugins.make_sampler(SEED_STUDY), PriorBandSampler)
    recipe = warmstart.params_of(config.from_dict(None, SEED_STUDY.fixed), SEED_STUDY)
    drawn = run(SEED_STUDY, 40, report=False).trials[1:]
    names = ("model.width", "model.se", "optim.batch_size", "optim.name", "smoothing.shape")
    same = statistics.fmean(t.params[k] == recipe[k] for t in drawn for k in names)
    uniform = statistics.fmean(1 / len(p.choices) for p in SEED_STUDY.params if p.name in names)
    assert same > uniform + 0.08  # expected: 0.52 against 0.37


def test_the_prior_is_the_known_recipe_and_the_first_trials_gather_around_it():
    spec = prior_spec(uniform=0.0, confidence=0.9)  # the prior arm alone, standard deviation 0.1
    recipe = warmstart.params_of(config.from_dict(None, spec.fixed), spec)
    study = run(spec, 60, report=False)  # no evidence: every draw from the prior
    assert recipe_params(study.trials) == recipe
    assert study.sampler.weights(study.trials, study.direction, recipe) == (0.0, 1.0, 0.0)
    drawn = study.trials[1:]
    uniform = run(spec, 60, sampler=optuna.samplers.RandomSampler(seed=0), report=False).trials[1:]
    assert distance(spec, drawn, recipe) < 0.5 * distance(spec, uniform, recipe)
    same = sum(t.params["optim.name"] == recipe["optim.name"] for t in drawn) / len(drawn)
    assert same > 0.85  # uniform: 0.5; the prior: 0.9 + 0.1 / 2


def test_a_misleading_prior_still_covers_the_space_and_gives_way_to_the_incumbent():
    spec = prior_spec()
    recipe = warmstart.params_of(config.from_dict(None, spec.fixed), spec)

    def far_is_good(params):  # the further from the recipe, the better
        return sum(abs(unit(spec, k, params[k]) - unit(spec, k, recipe[k])) for k in NUMERIC if k in params)

    study = run(spec, 80, far_is_good)
    sampler = study.sampler
    uniform, prior, incumbent = sampler.weights(study.trials, study.direction, recipe)
    assert uniform == 0.5 and incumbent > prior
    drawn = study.trials[1:]
    for name in ("model.width", "optim.batch_size", "optim.name", "smoothing.shape"):
        choices = next(p.choices for p in spec.params if p.name == name)
        assert {t.params[name] for t in drawn} == set(choices)
    for name in NUMERIC:
        thirds = {min(2, int(3 * unit(spec, name, t.params[name]))) for t in drawn if name in t.params}
        assert thirds == {0, 1, 2}, name
    late, early = drawn[40:], drawn[:40]
    assert distance(spec, late, recipe) > distance(spec, early, recipe)


def test_without_a_known_recipe_the_prior_arm_draws_uniformly():
    spec = prior_spec()
    study = run(spec, 60, recipe=False)
    assert recipe_params(study.trials) == {}
    uniform = run(spec, 60, sampler=optuna.samplers.RandomSampler(seed=0), recipe=False)
    centre = {k: next(p for p in spec.params if p.name == k).low for k in NUMERIC}  # any fixed point
    assert distance(spec, study.trials, centre) == pytest.approx(distance(spec, uniform.trials, centre), abs=0.06)


def test_a_seed_fixes_the_draws():
    params = [t.params for t in run(prior_spec(seed=5), 30, lambda p: p.get("lr_adamw", 0.0)).trials]
    again = [t.params for t in run(prior_spec(seed=5), 30, lambda p: p.get("lr_adamw", 0.0)).trials]
    other = [t.params for t in run(prior_spec(seed=6), 30, lambda p: p.get("lr_adamw", 0.0)).trials]
    assert params == again and params != other


def test_workers_share_the_study_and_the_recipe_while_it_runs():
    """Two workers (samplers seeded seed + k) on one storage, trials left running as on parallel
    workers: each sees the recipe as the prior from the moment trial 0 is queued."""
    spec = prior_spec()
    storage = optuna.storages.InMemoryStorage()
    workers = [
        optuna.create_study(
            storage=storage,
            study_name="s",
            direction="maximize",
            sampler=plugins.make_sampler(spec, k),
            load_if_exists=True,
        )
        for k in (0, 1)
    ]
    warmstart.enqueue_known_recipe(workers[0], spec)
    recipe = warmstart.params_of(config.from_dict(None, spec.fixed), spec)
    running = []
    for i in range(24):
        study = workers[i % 2]
        trial = study.ask()
        suggest_config(trial, spec)
        assert recipe_params(study.get_trials(deepcopy=False)) == recipe
        running.append((study, trial))
        if len(running) > 2:  # two trials stay running while the next is drawn
            done_study, done = running.pop(0)
            done.report(0.5, 1)
            done_study.tell(done, done.params.get("smoothing.start", 0.0))
    params = [t.params for t in workers[0].get_trials(deepcopy=False)]
    assert len({tuple(sorted(p.items())) for p in params}) == len(params)  # no two workers draw alike
