"""What `stl-tune proxy` adds to Optuna's gRPC storage proxy: the heartbeat that gRPC cannot carry.

Optuna's gRPC API has no heartbeat call (GrpcStorageProxy is no BaseHeartbeat, optuna 5.0), and
fail_stale_trials skips RUNNING trials without a heartbeat row, so a trial whose worker died behind
a plain proxy stays RUNNING forever. Here each trial write a worker sends counts as its heartbeat,
and the proxy fails silent trials itself (docs/SCALING.md).
"""

from __future__ import annotations

import logging
import time

import optuna

from stl_tune.search.optuna_compat import CachedStorage
from stl_tune.search.storage.storages import fail_stale_trials
from stl_tune.search.storage.urls import error_line

log = logging.getLogger(__name__)


class HeartbeatOnWrite(CachedStorage):
    """The database storage behind the proxy, taking every write for a trial as its heartbeat.

    Each trial write a worker sends (start, params, per-epoch values, attrs) records a heartbeat,
    so a trial is judged alive while it writes at least once per grace period.
    """

    def create_new_trial(self, study_id, template_trial=None):
        trial_id = super().create_new_trial(study_id, template_trial)
        self.record_heartbeat(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id, state, values=None):
        changed = super().set_trial_state_values(trial_id, state, values)
        if state == optuna.trial.TrialState.RUNNING:  # a WAITING (retried) trial starts its clock
            self.record_heartbeat(trial_id)
        return changed

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution):
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self.record_heartbeat(trial_id)

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value):
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self.record_heartbeat(trial_id)

    def set_trial_user_attr(self, trial_id, key, value):
        super().set_trial_user_attr(trial_id, key, value)
        self.record_heartbeat(trial_id)

    def set_trial_system_attr(self, trial_id, key, value):
        super().set_trial_system_attr(trial_id, key, value)
        self.record_heartbeat(trial_id)


def fail_stale_trials_forever(storage: optuna.storages.BaseStorage, url: str, every_s: float) -> None:
    """What a direct-database worker does before each trial, done here for the workers behind us.
    url: the database's, to keep its password out of the error lines."""
    while True:
        time.sleep(every_s)
        try:
            for frozen in storage.get_all_studies():
                fail_stale_trials(optuna.load_study(study_name=frozen.study_name, storage=storage))
        except Exception as e:  # a database hiccup must not end the checks; the next round retries
            log.warning("stale-trial check failed: %s: %s", type(e).__name__, error_line(e, url))
