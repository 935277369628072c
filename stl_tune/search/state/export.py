"""A finished trial -> the final-training config: its stored, fully resolved TrainConfig, set to
train on train+validation. Read from the trial's config user attr, never rebuilt from its params,
so defaults and `fixed` values are exactly those the trial ran with."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune import config
from stl_tune.config import ConfigError, TrainConfig
from stl_tune.errors import StudyError
from stl_tune.search.record import CONFIG_ATTR, CONFIRMED_ATTR, SPEC_ATTR
from stl_tune.search.state.confirm import best_confirmed
from stl_tune.search.state.trials import ranked


def pick_trial(study: optuna.Study, trial_number: int | None = None) -> FrozenTrial:
    """Trial `trial_number` of the study, or its best one (by confirmed mean once `stl-tune
    confirm` ran, else by value); it must be COMPLETE."""
    trials = study.get_trials(deepcopy=False)
    if trial_number is None and (confirmed := best_confirmed(study)) is not None:
        trial_number = confirmed[0]
    if trial_number is None:
        best = ranked(trials, study.direction)
        if not best:
            raise StudyError(f"study '{study.study_name}' has no complete trial yet")
        return best[0]
    found = [t for t in trials if t.number == trial_number]
    if not found:
        span = f"trials are 0..{len(trials) - 1}" if trials else "it has no trials"
        raise StudyError(f"study '{study.study_name}' has no trial {trial_number}; {span}")
    if found[0].state != TrialState.COMPLETE:
        raise StudyError(f"trial {trial_number} of study '{study.study_name}' is {found[0].state.name}, not COMPLETE")
    return found[0]


def final_config(trial: FrozenTrial) -> TrainConfig:
    """The trial's config set up for final training."""
    if CONFIG_ATTR not in trial.user_attrs:
        raise StudyError(f"trial {trial.number} stored no config (user attr '{CONFIG_ATTR}')")
    try:
        cfg = config.from_dict(trial.user_attrs[CONFIG_ATTR])
    except ConfigError as e:  # e.g. written by an older stl-tune with other keys
        raise StudyError(f"trial {trial.number}: its stored config no longer loads: {e}") from None
    cfg.data.train_on_val = True  # the final model also learns from the held-out validation images
    # Device placement belongs to the worker (cuda:N per slot), not to the recipe.
    cfg.runtime.device = "auto"
    return config.validate(cfg)


def write_export(study: optuna.Study, trial_number: int | None, path: str | Path) -> FrozenTrial:
    """Write the export to `path` as YAML with a header naming its origin; returns the trial."""
    trial = pick_trial(study, trial_number)
    objective = study.user_attrs.get(SPEC_ATTR, {}).get("objective", "value")
    confirmed = (study.user_attrs.get(CONFIRMED_ATTR) or {}).get(str(trial.number))
    proof = (
        f"; confirmed: {confirmed['mean']:.4f} ± {confirmed['std']:.4f} over {len(confirmed['values'])} seeds"
        if confirmed
        else ""
    )
    header = (
        f"# Final-training config from study '{study.study_name}', trial {trial.number} "
        f"({objective} = {trial.value:.4f}{proof}).\n"
        "# The trial's full config, except: data.train_on_val: true (train+validation, so no\n"
        "# validation accuracy is reported) and runtime.device: auto. Run it with:\n"
        f"#   stl-tune train --config {path}\n"
    )
    config.dump(final_config(trial), path, header=header)
    return trial
