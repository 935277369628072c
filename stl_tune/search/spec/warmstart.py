"""Starting a study from what is known, so that the sampler does not begin from nothing:
- the known recipe (the config defaults, with the study's `fixed`) as the first trial of a new study;
- configs from files (`stl-tune run --enqueue FILE`, e.g. an export), as the next trials;
- the finished trials of an older study whose parameters fit the new space (`--from-study`).

Queued trials go through Optuna's enqueue_trial: the parameters a config sets inside the space are
fixed, the rest are sampled. They carry the user attr record.ENQUEUED_ATTR (retries inherit it), and the
objective never prunes them: a known-good recipe that learns slowly early (Mixup for 100 epochs)
must not lose to an early rung.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune import config
from stl_tune.config import TrainConfig
from stl_tune.errors import StudyError
from stl_tune.search.record import COPIED_ATTR, ENQUEUED_ATTR, KNOWN_RECIPE
from stl_tune.search.spec.space import ParamSpec, StudySpec


def params_of(cfg: TrainConfig, spec: StudySpec) -> dict[str, Any]:
    """{parameter name: value} for each parameter of the space that applies to `cfg` and whose
    value in `cfg` lies inside the parameter's range; the others are left to the sampler."""
    return {
        p.name: config.get(cfg, p.path) for p in spec.params if p.applies(cfg) and p.contains(config.get(cfg, p.path))
    }


@dataclass
class Queued:
    """What enqueue did with a config."""

    params: dict[str, Any]  # the parameters fixed for the trial
    outside: dict[str, Any]  # {path: value} the space does not hold: left to the sampler
    added: bool  # False: a trial with these params exists already, so none was queued

    def line(self, what: str) -> str:
        said = (
            f"{what}, run to full length"
            if self.added
            else f"{what}: a trial with these values exists; not queued again"
        )
        if self.outside:  # not among the enqueued params: Optuna's sampler draws them for this trial
            values = ", ".join(f"{k}={v}" for k, v in self.outside.items())
            said += (
                f"; outside this study's search space, so not used: {values} (the sampler draws "
                f"{', '.join(self.outside)} for this trial from the space)"
            )
        return said


def enqueue(study: optuna.Study, spec: StudySpec, cfg: TrainConfig, origin: str) -> Queued:
    """Queue a trial of `cfg`'s values inside the space (see params_of)."""
    params = params_of(cfg, spec)
    outside = {p.path: config.get(cfg, p.path) for p in spec.params if p.applies(cfg) and p.name not in params}
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: origin}, skip_if_exists=True)
    added = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > waiting
    return Queued(params, outside, added)


def enqueue_known_recipe(study: optuna.Study, spec: StudySpec) -> Queued | None:
    """Queue the known recipe as trial 0 of a study that has no trials yet; None for a used study."""
    if study.get_trials(deepcopy=False):
        return None
    return enqueue(study, spec, config.from_dict(None, spec.fixed), KNOWN_RECIPE)


def copy_trials(source: optuna.Study, target: optuna.Study, spec: StudySpec) -> tuple[int, int, int]:
    """Add the finished (complete or pruned) trials of `source` whose parameters all belong to
    `spec`'s space, with their values, curves and attrs, to `target`; (copied, skipped, copied
    before). A trial copied by an earlier call (the same command run again) is not copied twice.

    Copied trials teach the sampler and the pruner; they do not count towards the target's trial
    budget (record.counts), and their retry history is not carried over.
    """
    if source.direction != target.direction:
        raise StudyError(f"study '{source.study_name}' is {source.direction.name.lower()}d, not like the new one")
    space = {p.name: p for p in spec.params}
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    there = {t.user_attrs.get(COPIED_ATTR) for t in target.get_trials(deepcopy=False)}
    copies, skipped, before = [], 0, 0
    for t in source.get_trials(deepcopy=False, states=done):
        origin = f"study {source.study_name}, trial {t.number}"
        if origin in there:
            before += 1
        elif not _fits(t, space):
            skipped += 1
        else:
            copies.append(
                optuna.trial.create_trial(
                    state=t.state,
                    value=t.value,
                    params=t.params,  # a pruned trial's value: its last epoch's, as Optuna keeps it
                    distributions={k: space[k].distribution() for k in t.params},
                    intermediate_values=t.intermediate_values,
                    user_attrs={**t.user_attrs, COPIED_ATTR: origin},
                )
            )
    target.add_trials(copies)
    return len(copies), skipped, before


def _fits(t: FrozenTrial, space: dict[str, ParamSpec]) -> bool:
    return all(name in space and space[name].contains(value) for name, value in t.params.items())
