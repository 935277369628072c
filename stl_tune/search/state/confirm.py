"""`stl-tune confirm`: re-train a search's top K configs with S new seeds, so that the exported
winner is the config that is good, not the one that was lucky on one 500-image validation split.

The re-trainings are the trials of a second study, "<name>.confirm", in the same storage: its space
is the search's plus `seed` (which also draws the validation split), and every trial is queued
(enqueue_trial) with a candidate's parameters and one seed. So they run on the same workers as a
search, on any number of hosts, with the exact budget (K x S), crash retries that resume from
checkpoints, and no pruning; a second identical call trains nothing. Workers of a confirm study
run queued trials only: one that fails is reported, not replaced by a sampled config.

The summary, {trial number: mean, std, values, seeds}, goes into the search study's user attrs
(record.CONFIRMED_ATTR), where status, export, the report and the dashboard read it.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune import config
from stl_tune.errors import StudyError
from stl_tune.search import optuna_compat as compat
from stl_tune.search.record import (
    CANDIDATE_ATTR,
    CONFIG_ATTR,
    CONFIRMED_ATTR,
    ENQUEUED_ATTR,
    N_TRIALS_ATTR,
    QUEUED_ONLY_ATTR,
)
from stl_tune.search.spec.space import ParamSpec, StudySpec
from stl_tune.search.state.study import CONFIRM_SUFFIX as SUFFIX
from stl_tune.search.state.study import create_or_load_study
from stl_tune.search.state.trials import best_first, ranked


def new_seeds(spec: StudySpec, n: int) -> list[int]:
    """n seeds the search did not use: the study's seed + 1, + 2, ..."""
    base = config.from_dict(None, spec.fixed).seed
    return [base + 1 + i for i in range(n)]


def searched_data_dir(search: optuna.Study) -> Path | None:
    """The data folder the search's best trial trained on (its recorded data.dir), if any."""
    best = ranked(search.get_trials(deepcopy=False), search.direction)
    recorded = best[0].user_attrs.get(CONFIG_ATTR, {}).get("data", {}).get("dir") if best else None
    return Path(recorded) if recorded else None


def confirm_spec(spec: StudySpec, seeds: list[int]) -> StudySpec:
    """The search's space plus `seed`; no pruning (queued trials run to full length anyway)."""
    seed = ParamSpec(path="seed", kind="categorical", choices=list(seeds))
    return dataclasses.replace(
        spec,
        name=spec.name + SUFFIX,
        params=[*(p for p in spec.params if p.path != "seed"), seed],
        pruner={"name": "none"},
        time_budget=None,
    )


def queue_confirmations(
    search: optuna.Study, spec: StudySpec, top: int, n_seeds: int
) -> tuple[optuna.Study, list[FrozenTrial], list[int]]:
    """Create (or load) the confirm study of `search` and queue its trials; (study, candidates, seeds).
    Its trial budget, K x S, is stored in it as `stl-tune run` does."""
    candidates = ranked(search.get_trials(deepcopy=False), search.direction)[:top]
    if not candidates:
        raise StudyError(f"study '{search.study_name}' has no complete trial to confirm yet")
    seeds = new_seeds(spec, n_seeds)
    study = create_or_load_study(confirm_spec(spec, seeds), search.study_name + SUFFIX, compat.storage_of(search))
    for t in candidates:
        for s in seeds:
            study.enqueue_trial(
                {**t.params, "seed": s},
                user_attrs={CANDIDATE_ATTR: t.number, ENQUEUED_ATTR: f"confirmation of trial {t.number}"},
                skip_if_exists=True,
            )
    study.set_user_attr(QUEUED_ONLY_ATTR, True)
    study.set_user_attr(N_TRIALS_ATTR, len(candidates) * len(seeds))
    return study, candidates, seeds


def summarize(confirm: optuna.Study, search: optuna.Study) -> dict[str, dict]:
    """{search trial number (a string: JSON keys): {"mean", "std", "values", "seeds"}} over the
    complete confirmation trials, stored in the search study's user attrs; returned too."""
    by: dict[int, list[FrozenTrial]] = {}
    for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        by.setdefault(t.user_attrs[CANDIDATE_ATTR], []).append(t)
    out = {}
    for number, trials in sorted(by.items()):
        values = [t.value for t in sorted(trials, key=lambda t: t.params["seed"])]
        out[str(number)] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
            "seeds": sorted(t.params["seed"] for t in trials),
        }
    search.set_user_attr(CONFIRMED_ATTR, out)
    return out


def confirmed_ranking(search: optuna.Study) -> list[tuple[int, dict]]:
    """(trial number, its summary) of each confirmed candidate, the best mean first; [] before any
    confirmation."""
    summaries = ((int(n), s) for n, s in (search.user_attrs.get(CONFIRMED_ATTR) or {}).items())
    return sorted(summaries, key=best_first(search.direction, lambda item: item[1]["mean"]))


def best_confirmed(search: optuna.Study) -> tuple[int, dict] | None:
    """(trial number, its summary) of the best confirmed mean, or None before any confirmation."""
    ranking = confirmed_ranking(search)
    return ranking[0] if ranking else None
