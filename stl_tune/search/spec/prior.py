"""A sampler that searches around the known recipe first (PriorBand's, as an Optuna sampler).

PriorBand (Mallik et al., NeurIPS 2023) draws each new configuration from one of three
distributions: uniform over the space, a prior around an expert's configuration, or a mutation of
the incumbent (the best configuration so far); the uniform share stays fixed, and the rest is split
between prior and incumbent by how likely the configurations the evidence ranks highest are under
each. Optuna has no such sampler (NePS has PriorBand, Optuna only `enqueue_trial`), so it is
written here, following NePS's neps/optimizers/priorband.py: the uniform draws are Optuna's
RandomSampler's; the prior and the mutations are drawn here, since Optuna has no distribution
centred on a given point.

The prior's centre is the known recipe: the parameters of the study's first queued trial, which
`stl-tune run` queues as trial 0 of a new study (warmstart.enqueue_known_recipe: the config
defaults with the study's `fixed`, inside the space; bench_search_quality.py queues the recipe at
its scale). A study without a queued trial has no centre, and the prior arm draws uniformly.
Around the centre, in each parameter's [0, 1] range (on a log scale where the space is log): a
numeric parameter follows a normal of standard deviation 1 - confidence truncated to the range, a
categorical takes the centre's value with probability confidence + (1 - confidence) / n and any
other value with (1 - confidence) / n; a parameter the centre does not set is uniform.

The evidence, read from the trials' reported curves, so any pruner works: the highest epoch that
at least `eta` trials have reported, and the best 1/eta of those trials at it. Until such a rung
and one complete trial exist, the non-uniform share goes to the prior. The arm is drawn once per
trial (before_trial), so conditional parameters come from the same arm as the others.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search.record import ENQUEUED_ATTR

UNIFORM, PRIOR, INCUMBENT = "uniform", "prior", "incumbent"
_FIXED_PARAMS = "fixed_params"  # where enqueue_trial keeps a queued trial's parameters (Optuna's system attr)


class PriorBandSampler(optuna.samplers.BaseSampler):
    """Options (a study file's `sampler: {name: prior, ...}`):
    uniform: the share of uniform draws (PriorBand's 1 / (1 + eta^0) for successive halving's base rung).
    confidence: in (0, 1); how tightly the prior holds to the recipe (NePS's "medium" is 0.5).
    eta: the pruner's reduction factor: a rung needs eta trials, its top 1/eta are the evidence.
    mutation_rate, mutation_std: the share of the incumbent's parameters a mutation changes, and
    the standard deviation of a numeric change on the [0, 1] scale (NePS's defaults).
    seed: the random stream (worker k of a study uses seed + k: plugins.make_sampler).
    """

    def __init__(
        self,
        uniform: float = 0.5,
        confidence: float = 0.5,
        eta: int = 3,
        mutation_rate: float = 0.5,
        mutation_std: float = 0.25,
        seed: int | None = None,
    ) -> None:
        for name, v in (("uniform", uniform), ("mutation_rate", mutation_rate)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if mutation_std <= 0.0:
            raise ValueError(f"mutation_std must be above 0, got {mutation_std}")
        if eta < 2:
            raise ValueError(f"eta must be at least 2, got {eta}")
        self.uniform, self.confidence, self.eta = uniform, confidence, eta
        self.mutation_rate, self.mutation_std = mutation_rate, mutation_std
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._plan: dict[int, tuple[str, dict[str, Any]]] = {}  # trial number -> (arm, centre of the arm)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    # PriorBand draws each parameter on its own: the arm, chosen once per trial, ties them together.
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._plan[trial.number] = self.plan(study.get_trials(deepcopy=False), study.direction)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._plan.pop(trial.number, None)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if trial.number not in self._plan:  # Optuna calls before_trial first; this is for a caller that did not
            self.before_trial(study, trial)
        arm, centre = self._plan[trial.number]
        value = centre.get(param_name)
        if arm == UNIFORM or not _holds(param_distribution, value) or param_distribution.single():
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        if arm == INCUMBENT and self._rng.rand() >= self.mutation_rate:
            return value  # a mutation keeps the incumbent's other parameters
        if isinstance(param_distribution, CategoricalDistribution):
            return self._categorical(param_distribution, value, avoid=arm == INCUMBENT)
        std = 1.0 - self.confidence if arm == PRIOR else self.mutation_std
        return _from_unit(param_distribution, _truncnorm(self._rng, _to_unit(param_distribution, value), std))

    # ------------------------------------------------------------------------------- the policy
    def plan(self, trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> tuple[str, dict[str, Any]]:
        """The arm of the next trial and its centre (the recipe's or the incumbent's parameters)."""
        prior = recipe_params(trials)
        weights = self.weights(trials, direction, prior)
        arm = [UNIFORM, PRIOR, INCUMBENT][self._rng.choice(3, p=np.asarray(weights) / sum(weights))]
        if arm == INCUMBENT:
            return arm, dict(_incumbent(trials, direction).params)
        return arm, prior

    def weights(
        self, trials: list[FrozenTrial], direction: optuna.study.StudyDirection, prior: dict[str, Any]
    ) -> tuple[float, float, float]:
        """(uniform, prior, incumbent) shares, summing to 1."""
        rest = 1.0 - self.uniform
        top = _top_of_highest_rung(trials, direction, self.eta)
        incumbent = _incumbent(trials, direction)
        if not top or incumbent is None:
            return self.uniform, rest, 0.0
        ranks = range(len(top), 0, -1)  # the best counts most, as in NePS
        by_prior = sum(w * math.exp(log_density(t, prior, self.confidence)) for w, t in zip(ranks, top, strict=False))
        by_inc = sum(
            w * math.exp(log_density(t, incumbent.params, self.confidence)) for w, t in zip(ranks, top, strict=False)
        )
        share = by_prior / (by_prior + by_inc) if by_prior + by_inc > 0 else 0.5
        return self.uniform, rest * share, rest * (1.0 - share)

    def _categorical(self, dist: CategoricalDistribution, value: Any, avoid: bool) -> Any:
        """The prior's categorical draw; a mutation (avoid) takes one of the other choices."""
        n = len(dist.choices)
        centre = dist.to_internal_repr(value)
        if avoid:
            others = [i for i in range(n) if i != centre]
            return dist.to_external_repr(others[self._rng.randint(len(others))])
        p = np.full(n, (1.0 - self.confidence) / n)
        p[centre] += self.confidence
        return dist.to_external_repr(int(self._rng.choice(n, p=p)))


# --------------------------------------------------------------------------------- the evidence
def recipe_params(trials: list[FrozenTrial]) -> dict[str, Any]:
    """The parameters of the first queued trial, the known recipe ({} when the study has none):
    the values enqueue_trial fixed, readable while the trial waits or runs as well as after it."""
    queued = [t for t in trials if ENQUEUED_ATTR in t.user_attrs]
    if not queued:
        return {}
    first = min(queued, key=lambda t: t.number)
    return dict(first.system_attrs.get(_FIXED_PARAMS) or first.params)


def _incumbent(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> FrozenTrial | None:
    """The best complete trial."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: sign * t.value)


def _top_of_highest_rung(
    trials: list[FrozenTrial], direction: optuna.study.StudyDirection, eta: int
) -> list[FrozenTrial]:
    """The best 1/eta (the best first) of the trials that reported the highest epoch at least eta
    trials reported, by their value there; [] before any epoch has eta reports."""
    reported = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
    steps: dict[int, int] = {}
    for t in reported:
        for step in t.intermediate_values:
            steps[step] = steps.get(step, 0) + 1
    rungs = [s for s, n in steps.items() if n >= eta]
    if not rungs:
        return []
    rung = max(rungs)
    at = [t for t in reported if rung in t.intermediate_values and not math.isnan(t.intermediate_values[rung])]
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    at.sort(key=lambda t: -sign * t.intermediate_values[rung])
    return at[: max(1, len(at) // eta)]


def log_density(trial: FrozenTrial, centre: dict[str, Any], confidence: float) -> float:
    """Log density of a trial's parameters under the distribution around `centre` that the prior
    arm draws from, on the [0, 1] scales; a parameter the centre does not set counts its uniform
    density (1, or 1/n for a categorical)."""
    total = 0.0
    for name, value in trial.params.items():
        dist = trial.distributions[name]
        if dist.single():
            continue
        if isinstance(dist, CategoricalDistribution):
            n = len(dist.choices)
            p = (1.0 - confidence) / n + (confidence if value == centre.get(name) else 0.0)
            total += math.log(p if _holds(dist, centre.get(name)) else 1.0 / n)
        elif _holds(dist, centre.get(name)):
            total += _truncnorm_logpdf(_to_unit(dist, value), _to_unit(dist, centre[name]), 1.0 - confidence)
    return total


# ------------------------------------------------------------------------ the [0, 1] scale
# A truncated normal on [0, 1], by rejection (scipy, which has one, is not a dependency of
# stl-tune): with a standard deviation below 1, over a quarter of the draws land inside.
def _truncnorm(rng: np.random.RandomState, mean: float, std: float) -> float:
    while True:
        x = rng.normal(mean, std)
        if 0.0 <= x <= 1.0:
            return float(x)


def _truncnorm_logpdf(x: float, mean: float, std: float) -> float:
    mass = 0.5 * (math.erf((1.0 - mean) / (std * math.sqrt(2))) - math.erf((0.0 - mean) / (std * math.sqrt(2))))
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi) * mass)


def _holds(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of the distribution's (None: no value)."""
    if value is None:
        return False
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and dist.low <= value <= dist.high


def _to_unit(dist: FloatDistribution | IntDistribution, value: float) -> float:
    low, high, x = dist.low, dist.high, float(value)
    if dist.log:
        low, high, x = math.log(low), math.log(high), math.log(x)
    return (x - low) / (high - low)


def _from_unit(dist: FloatDistribution | IntDistribution, u: float) -> float | int:
    """The value at `u` on the [0, 1] scale, on the distribution's grid (step, integers)."""
    low, high = dist.low, dist.high
    x = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if dist.log else low + u * (high - low)
    if dist.step is not None:
        x = low + round((x - low) / dist.step) * dist.step
    x = min(max(x, low), high)
    return int(round(x)) if isinstance(dist, IntDistribution) else float(x)
