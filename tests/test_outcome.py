"""A trial's outcome as one value: settle() does what the table in search/state/outcome.py says for every
kind, and caught() names what a run raised."""

from __future__ import annotations

import logging
import math

import optuna
import pytest
from optuna.trial import TrialState

from stl_tune.errors import DataError
from stl_tune.search import optuna_compat as compat
from stl_tune.search.state.outcome import (
    MEANINGS,
    NOT_AN_ERROR,
    RESUMABLE,
    RETRIED,
    Kind,
    Outcome,
    Reason,
    caught,
    fail_reason,
    outcome_of,
    settle,
)


def _outcome(kind: Kind, swept: list[str]) -> Outcome:
    note = {Kind.DIVERGED: "diverged at epoch 3", Kind.FAILED: "OSError: disk full"}.get(kind)
    return Outcome(kind, value=0.5, note=note, sweep=lambda: swept.append("swept"))


@pytest.mark.parametrize("kind", [k for k in Kind if k != Kind.STALE])
def test_settle_records_tells_retries_and_sweeps_as_the_table_says(kind):
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("checkpoint", {"artifact_id": "trial-0-epoch-1-x", "epoch": 1})
    swept: list[str] = []
    told = settle(study, trial, _outcome(kind, swept))

    meaning = MEANINGS[kind]
    assert told.state == meaning.state
    assert told.user_attrs.get("status") == meaning.status
    assert fail_reason(told) == (meaning.reason or _outcome(kind, []).note)
    assert told.value == (0.5 if meaning.state == TrialState.COMPLETE else None)
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert len(retries) == meaning.retried
    if meaning.retried:  # the retry resumes from the checkpoint, kept in place
        assert compat.retry_history(retries[0]) == [told.number] and swept == []
        assert retries[0].user_attrs["checkpoint"]["epoch"] == 1
    else:  # the line of attempts ends: its checkpoints go
        assert swept == ["swept"] and told.user_attrs["checkpoint"] is None
    assert (fail_reason(told) in RETRIED) == meaning.retried
    assert (fail_reason(told) in RESUMABLE) == (meaning.retried and not meaning.failure)
    assert (fail_reason(told) in NOT_AN_ERROR) == (not meaning.failure)


def test_a_completed_trial_without_a_finite_value_is_told_fail():
    study = optuna.create_study()
    for value in (math.nan, None):
        told = settle(study, study.ask(), Outcome(Kind.COMPLETED, value))
        assert told.state == TrialState.FAIL and told.user_attrs["status"] == "completed"


def test_a_trial_failed_by_another_worker_is_left_to_its_retry(caplog):
    """Stale: failed (and re-queued) by another worker's heartbeat check before this one settles it."""
    study = optuna.create_study()
    trial = study.ask()
    compat.storage_of(study).set_trial_state_values(compat.trial_id(trial), TrialState.FAIL)
    swept: list[str] = []
    for kind in (Kind.COMPLETED, Kind.INTERRUPTED, Kind.STALE):
        with caplog.at_level(logging.WARNING, logger="stl_tune.search.state.outcome"):
            assert settle(study, trial, _outcome(kind, swept)) is None
    assert swept == [] and study.get_trials(states=(TrialState.WAITING,)) == []  # its checkpoints kept
    assert len([r for r in caplog.records if r.name == "stl_tune.search.state.outcome"]) == 3  # one line each


def test_caught_names_what_a_run_raised():
    try:
        raise OSError("disk full\nsecond line")
    except OSError as e:
        failed = caught(e)
    assert failed.kind == Kind.FAILED and failed.reason == "OSError: disk full" and isinstance(failed.error, OSError)
    bad_data = caught(DataError("cat/3.png: cannot read this image"))
    assert bad_data.kind == Kind.DATA_ERROR and bad_data.reason == Reason.DATA
    assert caught(KeyboardInterrupt()).kind == Kind.INTERRUPTED
    assert caught(optuna.TrialPruned()).kind == Kind.PRUNED
    assert caught(optuna.exceptions.UpdateFinishedTrialError()).kind == Kind.STALE


def test_a_plain_optuna_objective_has_an_outcome_too():
    study = optuna.create_study()
    assert outcome_of(lambda trial: 0.25, study.ask()) == Outcome(Kind.RETURNED, 0.25)
    assert outcome_of(lambda trial: Outcome(Kind.PAUSED), study.ask()) == Outcome(Kind.PAUSED)
    pruned = outcome_of(lambda trial: (_ for _ in ()).throw(optuna.TrialPruned()), study.ask())
    assert pruned.kind == Kind.PRUNED
    told = settle(study, study.ask(), Outcome(Kind.RETURNED, 0.25))
    assert told.state == TrialState.COMPLETE and told.user_attrs == {}  # nothing recorded
