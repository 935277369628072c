"""The peers' own code on the curve tables (issue 21, point 3): Syne Tune's and NePS's schedulers,
driven directly in benchmarks/simulate.py's loop, so they share its simulated clock, budget, table
mapping and scoring with the Optuna methods. Installed by the optional extra: pip install -e '.[bench]'.

Imported by simulate.py, which then offers these methods beside its own (only those whose library
imports):
  st-asha         Syne Tune 0.16 ASHA (baselines.ASHA: random configs, stopping rungs 1, 3, 9 of 12)
  st-bohb         Syne Tune 0.16 BOHB (baselines.BOHB: ASHA whose configs come from a KDE on each
                  trial's last value)
  neps-priorband  NePS 0.17 PriorBand (Hyperband, eta 3, over epochs; the known recipe, the table's
                  config 0, is its prior), through NePS's AskAndTell
Each with its library's defaults, seeded by the repeat. Not here, and why:
  MOBSTER, Hyper-Tune, DyHPO, DEHB: moved to Syne Tune's legacy_baselines in 0.14 and removed in
  0.15; every release that has them (up to 0.14.2) requires numpy < 1.27, and NePS 0.17 (and this
  project's venv) numpy >= 2, so no environment holds both.

How the study-file space becomes theirs:
- float -> uniform / loguniform (Syne Tune), HPOFloat (NePS); int -> randint / lograndint / qrandint
  (step), HPOInteger; categorical -> choice, HPOCategorical. A stepped parameter is, for NePS, an
  integer index into its grid (NePS has no step).
- Conditional parameters (`when:`): both libraries get every parameter of every branch and sample
  all of them; mapping back keeps the ones the space's conditions activate, decided by the
  project's own suggest_config (_active), so an inactive branch's draw is dropped unused.
- Final pick: the library's own notion of the incumbent, the trial with the best validation
  accuracy it was told at any epoch (Syne Tune's Tuner.best_config, NePS's status summary).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import simulate
from simulate import Decision, Proposal, Table

from stl_tune.search.spec.space import ParamSpec, suggest_config

METRIC = "val_acc"
EPOCH = "epoch"
# Syne Tune's own ASHA and BOHB pass points_to_evaluate=None in searcher_kwargs, and its searcher
# warns about that on every search (the only warning of that module).
logging.getLogger("syne_tune.optimizer.schedulers.searchers.last_value_multi_fidelity_searcher").setLevel(logging.ERROR)


def _active(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (one per parameter of the space) reduced to the parameters the space's conditions
    activate, as `stl-tune run` would suggest them, in plain Python types."""
    trial = optuna.trial.FixedTrial({p.name: _plain(p, values[p.name]) for p in table.space})
    suggest_config(trial, table.spec)
    return dict(trial.params)


def _plain(p: ParamSpec, v: Any) -> Any:
    """A library's value (numpy scalars included) as the space's own Python value."""
    if p.kind == "categorical":
        return next(c for c in p.choices or [] if c == v)
    return int(round(v)) if p.kind == "int" else float(v)


def _recipe(table: Table) -> dict[str, Any]:
    """The known recipe's params: the table's config 0 (build_curve_table.py puts it first)."""
    return table.params[table.ids.index(0)]


# ------------------------------------------------------------------------------------ Syne Tune
def _st_domain(p: ParamSpec) -> Any:
    from syne_tune.config_space import choice, lograndint, loguniform, qrandint, quniform, randint, uniform

    if p.kind == "categorical":
        return choice(list(p.choices or []))
    if p.kind == "int":
        if p.log:
            return lograndint(p.low, p.high)
        return randint(p.low, p.high) if (p.step or 1) == 1 else qrandint(p.low, p.high, q=p.step)
    if p.step is not None:
        return quniform(p.low, p.high, q=p.step)
    return loguniform(p.low, p.high) if p.log else uniform(p.low, p.high)


class SyneTuneSearcher:
    """A Syne Tune scheduler, called as its Tuner calls it (tuner.py): suggest and on_trial_add per
    new trial, on_trial_result per epoch, on_trial_remove after a STOP, on_trial_complete for a
    trial that ended on its own (its last epoch, or the recipe's patience), on_trial_error for a
    diverged one. At max_t the schedulers answer STOP to the last result, as a real trial's last
    report: that trial completes."""

    def __init__(self, table: Table, scheduler: str, repeat: int):
        from syne_tune.backend.trial_status import Trial
        from syne_tune.optimizer import baselines

        # Their random configs come from Domain.sample() without the searcher's seeded generator
        # (random_searcher.py, kde_searcher.py's _get_random_config): from NumPy's global one, seeded
        # here, as the simulator builds each searcher just before its search.
        np.random.seed(repeat)
        self._trial_cls = Trial
        self.table = table
        self.scheduler = getattr(baselines, scheduler)(
            {p.name: _st_domain(p) for p in table.space},
            metric=METRIC,
            do_minimize=False,
            time_attr=EPOCH,
            max_t=table.epochs,
            random_seed=repeat,
        )
        self.trials: dict[int, Any] = {}  # trial id -> syne_tune Trial
        self.params: dict[int, dict[str, Any]] = {}
        self.last: dict[int, dict[str, Any]] = {}  # the last result of each trial
        self.removed: set[int] = set()
        self.best: tuple[float, int] | None = None  # (val_acc, trial)

    def ask(self) -> Proposal | None:
        from syne_tune.optimizer.scheduler import TrialSuggestion

        suggestion: TrialSuggestion | None = self.scheduler.suggest()
        if suggestion is None:  # the searcher ran out of configs: the Tuner stops
            return None
        # ASHA and BOHB of Syne Tune 0.16 stop trials and never pause one, so never resume one
        assert suggestion.spawn_new_trial_id and suggestion.checkpoint_trial_id is None, suggestion
        tid = len(self.trials)
        trial = self._trial_cls(trial_id=tid, config=suggestion.config, creation_time=datetime.now())
        self.trials[tid] = trial
        self.params[tid] = _active(self.table, suggestion.config)
        self.scheduler.on_trial_add(trial)
        return Proposal(tid, self.params[tid])

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        from syne_tune.optimizer.scheduler import SchedulerDecision

        result = {METRIC: val_acc, EPOCH: epoch}
        self.last[trial_id] = result
        if self.best is None or val_acc > self.best[0]:
            self.best = (val_acc, trial_id)
        decision = self.scheduler.on_trial_result(self.trials[trial_id], result)
        if decision == SchedulerDecision.CONTINUE:
            return Decision.CONTINUE
        assert decision == SchedulerDecision.STOP, decision  # see ask(): no PAUSE
        self.scheduler.on_trial_remove(self.trials[trial_id])
        self.removed.add(trial_id)
        return Decision.CONTINUE if epoch >= self.table.epochs else Decision.STOP

    def finished(self, trial_id: int, completed: bool) -> None:
        if trial_id in self.removed:
            return
        if completed:
            self.scheduler.on_trial_complete(self.trials[trial_id], self.last[trial_id])
        else:  # diverged
            self.scheduler.on_trial_error(self.trials[trial_id])

    def choice(self) -> dict[str, Any] | None:
        return None if self.best is None else self.params[self.best[1]]


# ----------------------------------------------------------------------------------------- NePS
FIDELITY = "epochs"
# NePS's default confidence, "low", is a truncated normal with a std of 0.75 of the (unit) range and
# 0.25 of the mass on the prior's choice of a categorical, the rest spread over the others: for a
# two-way choice (optim.name, model.se) that draws the recipe's value less often than uniform
# draws would. "high": std 0.25, 0.75 of the mass on the recipe's choice (sampling/priors.py).
PRIOR_CONFIDENCE = "high"


def _neps_param(p: ParamSpec, prior: Any) -> Any:
    """NePS's parameter for `p`, centred on `prior` (None: no prior, as for the branch the recipe
    does not take); a stepped parameter becomes the index into its grid."""
    from neps import HPOCategorical, HPOFloat, HPOInteger

    conf = PRIOR_CONFIDENCE
    if p.kind == "categorical":
        return HPOCategorical(choices=list(p.choices or []), prior=prior, prior_confidence=conf)
    if _stepped(p):
        n = math.floor((p.high - p.low) / p.step + 1e-9) + 1
        index = None if prior is None else round((prior - p.low) / p.step)
        return HPOInteger(0, n - 1, prior=index, prior_confidence=conf)
    if p.kind == "int":
        return HPOInteger(p.low, p.high, log=p.log, prior=prior, prior_confidence=conf)
    return HPOFloat(p.low, p.high, log=p.log, prior=prior, prior_confidence=conf)


def _stepped(p: ParamSpec) -> bool:
    return p.kind != "categorical" and p.step is not None and not (p.kind == "int" and p.step == 1)


class PriorBandSearcher:
    """NePS's PriorBand through its AskAndTell: each ask is a config at a fidelity (epochs) of a
    Hyperband rung, new or a promotion of a config from the rung below. A new one starts a trial; a
    promotion resumes that config's paused trial. A trial runs to its rung's epochs, pauses there
    and is told its validation accuracy then (as 1 - accuracy, NePS minimises). A trial the
    recipe's patience ended early is told its last accuracy; promoted later, it is told the same
    again at once (the real run is over). A diverged trial is told a crash."""

    def __init__(self, table: Table, repeat: int):
        import torch

        with warnings.catch_warnings():  # NePS imports linear_operator, whose torch.jit.script warns: not ours to fix
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            import neps

        # PriorBand draws from NumPy's and torch's global generators (np.random.choice, torch.rand):
        # seeded here, as the simulator builds each searcher just before its search.
        np.random.seed(repeat)
        torch.manual_seed(repeat)
        self.table = table
        recipe = _recipe(table)
        space = {p.name: _neps_param(p, recipe.get(p.name)) for p in table.space}
        space[FIDELITY] = neps.HPOInteger(1, table.epochs, is_fidelity=True)
        self.neps = neps.AskAndTell(neps.algorithms.priorband(neps.SearchSpace(space)))
        self.sim_id: dict[str, int] = {}  # NePS config id (without the rung) -> simulator trial
        self.current: dict[int, tuple[str, int]] = {}  # trial -> (NePS trial id being run, target epochs)
        self.params: dict[int, dict[str, Any]] = {}
        self.last: dict[int, float] = {}  # the last validation accuracy of each trial
        self.over: dict[int, float | None] = {}  # trials that ended: last accuracy, None if diverged
        self.best: tuple[float, int] | None = None  # (val_acc told, trial)

    def ask(self) -> Proposal | None:
        while True:
            t = self.neps.ask()
            config_id, _ = t.id.split("_rung_")
            target = int(t.config[FIDELITY])
            if t.metadata.previous_trial_id is None:  # a new config
                tid = len(self.params)
                self.sim_id[config_id] = tid
                self.params[tid] = _active(self.table, self._values(t.config))
                self.current[tid] = (t.id, target)
                return Proposal(tid, self.params[tid])
            tid = self.sim_id[config_id]
            if tid not in self.over:  # paused at the rung below
                self.current[tid] = (t.id, target)
                return Proposal(tid, self.params[tid], resume=True)
            self._tell(t.id, tid, self.over[tid])

    def _values(self, config: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for p in self.table.space:
            v = config[p.name]
            out[p.name] = p.low + v * p.step if _stepped(p) else v
        return out

    def _tell(self, neps_id: str, tid: int, val_acc: float | None) -> None:
        if val_acc is None:
            self.neps.tell(neps_id, RuntimeError("diverged"))
            return
        self.neps.tell(neps_id, 1.0 - val_acc)
        if self.best is None or val_acc > self.best[0]:
            self.best = (val_acc, tid)

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        self.last[trial_id] = val_acc
        neps_id, target = self.current[trial_id]
        if epoch < target or epoch >= self.table.epochs:  # the last epoch: the trial completes
            return Decision.CONTINUE
        self._tell(neps_id, trial_id, val_acc)
        return Decision.PAUSE

    def finished(self, trial_id: int, completed: bool) -> None:
        # completed: its last epoch or the patience; not: diverged (PriorBand never stops a trial)
        self.over[trial_id] = self.last.get(trial_id) if completed else None
        self._tell(self.current[trial_id][0], trial_id, self.over[trial_id])

    def choice(self) -> dict[str, Any] | None:
        return None if self.best is None else self.params[self.best[1]]


# ------------------------------------------------------------------------------------- register
def _peers() -> dict[str, Any]:
    """The peers whose library is installed. The searchers import their library (NePS with botorch
    takes seconds), so a run of the Optuna methods alone does not pay for it."""
    out: dict[str, Any] = {}
    if importlib.util.find_spec("syne_tune") is not None:
        out["st-asha"] = lambda table, repeat: SyneTuneSearcher(table, "ASHA", repeat)
        out["st-bohb"] = lambda table, repeat: SyneTuneSearcher(table, "BOHB", repeat)
    if importlib.util.find_spec("neps") is not None:
        out["neps-priorband"] = PriorBandSearcher
    return out


PEERS = _peers()
simulate.METHODS.update(PEERS)
