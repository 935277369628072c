"""Study files: a search space of dotted TrainConfig paths, checked completely before any worker starts.

A study file (YAML) declares:
    name:          default study name (the file name without .yaml when missing)
    search_space:  {key: {type: float|int|categorical, low, high, log, step, choices, when, path}}
                   The key is the config path ("model.width") and the Optuna parameter name. When an
                   entry has `path:`, the key is only the parameter's name (an id) and `path` is the
                   config path: that is how one path gets a different range per condition, e.g.
                   lr_adamw and lr_sgd both set optim.lr under `when: {optim.name: [...]}` with
                   disjoint values. `when: {path: [values]}` suggests the parameter only while the
                   config value at `path` is one of `values`, evaluated in file order against the
                   values set so far (defaults, then `fixed`, then the entries above it).
    fixed:         overrides applied to every trial, nested ({optim: {epochs: 200}}) or dotted
    sampler:       {name: tpe|random|prior, ...constructor options} (prior: spec/prior.py)
    pruner:        {name: hyperband|hyperband_shared|median|successive_halving|none, ...constructor options}
                   (hyperband_shared: Hyperband whose sampler sees every bracket, not its own only)
    objective:     best_val_acc (default), val_acc (the last epoch's) or last5_val_acc (mean of the last 5)
    direction:     maximize (default) or minimize
    time_budget:   optional, e.g. 6h: `stl-tune run` stops starting trials after it (--time-budget wins)
    keep_models:   the best K completed trials whose final weights stay in the artifact store for
                   `stl-tune ensemble` (default 5; 0: none); search/worker/keep.py
What is checked on loading (StudySpec.from_dict): every key, path and plug-in option; `fixed` as a
whole config (config.validate); each bound or choice of a parameter against the config's type and
range, with `fixed` and the defaults around it (config.coerce + config.validate); the conditions.
Against the data, once it is in place, search/spec/datacheck.py checks the batch sizes.
Not checked: two searched values that config.validate refuses together (each is checked against
`fixed` alone; such a trial fails with that reason), whether a configuration fits in device memory
or trains without diverging, and whether every image file decodes (a bad training or validation
image fails every trial, naming the file).
"""

from __future__ import annotations

import copy
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from stl_tune import config
from stl_tune.config import ConfigError, TrainConfig
from stl_tune.errors import StudyError, UserError
from stl_tune.search.fmt import parse_duration
from stl_tune.search.optuna_compat import SharedHyperband
from stl_tune.search.spec.prior import PriorBandSampler

# Plug-in registries: the names a study file may use. GP, QMC and CMA-ES samplers need scipy or
# cmaes, which stl-tune does not install, so they are left out rather than failing at run time.
SAMPLERS: dict[str, type] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "prior": PriorBandSampler,  # PriorBand: uniform, around the known recipe, or the incumbent mutated
}
PRUNERS: dict[str, type] = {
    "hyperband": optuna.pruners.HyperbandPruner,  # resource = epochs; max_resource = optim.epochs
    "hyperband_shared": SharedHyperband,  # the same, but the sampler learns from every bracket's trials
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
HYPERBAND = ("hyperband", "hyperband_shared")
# Options a study file need not spell out (samplers only). Multivariate TPE models parameter
# interactions (lr x batch size); `group` splits that model where conditions change the space
# (adamw vs sgd params); constant liar keeps parallel workers from proposing the same point; a
# seed makes one worker reproducible.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "tpe": {"seed": 0, "multivariate": True, "group": True, "constant_liar": True},
    "random": {"seed": 0},
    "prior": {"seed": 0},
}
# What a trial's value is, from its per-epoch validation accuracies (search/worker/objective.py):
# best_val_acc: the best epoch; val_acc: the last epoch; last5_val_acc: the mean of the last 5
# epochs, which rewards a config that is good, not one lucky epoch on a small validation split.
OBJECTIVES = ("best_val_acc", "val_acc", "last5_val_acc")
DIRECTIONS = ("maximize", "minimize")
STUDY_KEYS = (
    "name",
    "search_space",
    "fixed",
    "sampler",
    "pruner",
    "objective",
    "direction",
    "time_budget",
    "keep_models",
)
KEEP_MODELS = 5  # keep_models' default: the best 5 trials' weights are kept (search/worker/keep.py)
PARAM_KEYS = ("type", "path", "low", "high", "log", "step", "choices", "when")
DEFAULT_STUDY_FILE = "studies/seed.yaml"
NO_TRAIN_ON_VAL = "a search needs the validation split; export sets train_on_val for final training"


# ------------------------------------------------------------------------------------ the spec
@dataclass
class ParamSpec:
    path: str  # dotted TrainConfig path the suggested value is written to
    kind: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    choices: list[Any] | None = None
    log: bool = False
    step: float | int | None = None
    when: dict[str, list[Any]] | None = None  # {"optim.name": ["sgd"]}: suggest only then
    name: str = ""  # Optuna parameter name; the path unless the entry has an id

    def __post_init__(self) -> None:
        self.name = self.name or self.path

    def applies(self, cfg: TrainConfig) -> bool:
        return all(config.get(cfg, p) in values for p, values in (self.when or {}).items())

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether suggest() can return `value`: one of the choices, or a number in [low, high] on
        the step's grid (low + k * step) where there is a step."""
        if self.kind == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.low <= value <= self.high:
            return False
        return self.step is None or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def clamp(self, value: Any) -> Any:
        """`value` if the range holds it, else the nearest bound (a categorical: its first choice)."""
        if self.kind == "categorical":
            return value if value in (self.choices or []) else self.choices[0]
        return min(max(value, self.low), self.high)

    def largest(self) -> Any:
        """The largest value suggest() can return: the largest choice, or the last point of the
        step's grid at or below high (Optuna draws low + k * step, never above high)."""
        if self.kind == "categorical":
            return max(self.choices)
        step = self.step or (1 if self.kind == "int" else None)
        return self.high if step is None else self.low + (self.high - self.low) // step * step

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution that suggest() draws from (for trials added from elsewhere)."""
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, step=self.step or 1, log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        if self.name != self.path:
            d["path"] = self.path
        if self.kind == "categorical":
            d["choices"] = list(self.choices or [])
        else:
            d.update(low=self.low, high=self.high)
            if self.log:
                d["log"] = True
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {p: list(v) for p, v in self.when.items()}
        return d


@dataclass
class StudySpec:
    name: str
    params: list[ParamSpec]
    fixed: dict[str, Any] = field(default_factory=dict)  # flat dotted overrides, already typed
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", **DEFAULT_OPTIONS["tpe"]})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    objective: str = "best_val_acc"
    direction: str = "maximize"
    time_budget: str | None = None  # e.g. "6h" (fmt.parse_duration); a run's --time-budget replaces it
    keep_models: int = KEEP_MODELS  # K: the best K completed trials keep their weights (search/worker/keep.py)

    def to_dict(self) -> dict[str, Any]:
        """The study file's form (dotted `fixed`, resolved sampler/pruner options); JSON-safe."""
        d = {
            "name": self.name,
            "objective": self.objective,
            "direction": self.direction,
            "search_space": {p.name: p.to_dict() for p in self.params},
            "fixed": dict(self.fixed),
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
        }
        d |= {"time_budget": self.time_budget} if self.time_budget else {}
        # only when set otherwise: a study stored before the key existed still matches its file
        return d | ({"keep_models": self.keep_models} if self.keep_models != KEEP_MODELS else {})

    @classmethod
    def from_dict(cls, d: Any, source: str = "<study>") -> StudySpec:
        """A validated spec; every problem is a StudyError naming `source` and the key."""
        return _Validator(source).study(d)


# ---------------------------------------------------------------------------------- validation
class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> StudyError:
        return StudyError(f"{self.source}: {key}: {msg}")

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        for k in value:
            if allowed is not None and k not in allowed:
                hint = config.nearest_key(str(k), list(allowed))
                raise self.fail(f"{key}.{k}", f"unknown key{hint}; valid: {', '.join(allowed)}")
        return value

    def study(self, d: Any) -> StudySpec:
        if not isinstance(d, dict):
            raise StudyError(
                f"{self.source}: a study file must be a mapping with keys {', '.join(STUDY_KEYS)}, "
                f"got {type(d).__name__}"
            )
        for k in d:
            if k not in STUDY_KEYS:
                hint = config.nearest_key(str(k), list(STUDY_KEYS))
                raise self.fail(str(k), f"unknown top-level key{hint}; valid: {', '.join(STUDY_KEYS)}")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail("name", f"must be a non-empty string, got {name!r}")
        objective = d.get("objective", "best_val_acc")
        if objective not in OBJECTIVES:
            raise self.fail("objective", f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        direction = d.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise self.fail("direction", f"must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        time_budget = d.get("time_budget")
        if time_budget is not None:
            try:
                parse_duration(str(time_budget))
            except UserError as e:
                raise self.fail("time_budget", str(e).replace("--time-budget ", "")) from None
        keep_models = d.get("keep_models", KEEP_MODELS)
        if isinstance(keep_models, bool) or not isinstance(keep_models, int) or keep_models < 0:
            raise self.fail("keep_models", f"must be a whole number >= 0, got {keep_models!r}")
        fixed, base = self.fixed(d.get("fixed") or {})
        params = self.params(d.get("search_space"), fixed, base)
        return StudySpec(
            name=name.strip(),
            params=params,
            fixed=fixed,
            sampler=self.plugin("sampler", d.get("sampler") or {}, SAMPLERS, "tpe", base, params),
            pruner=self.plugin("pruner", d.get("pruner") or {}, PRUNERS, "none", base, params),
            objective=objective,
            direction=direction,
            time_budget=str(time_budget) if time_budget is not None else None,
            keep_models=keep_models,
        )

    def fixed(self, d: Any) -> tuple[dict[str, Any], TrainConfig]:
        self.mapping("fixed", d)
        flat: dict[str, Any] = {}
        base = TrainConfig()
        for path, value in config.flatten(d).items():
            try:
                config.set_path(base, path, value)
            except ConfigError as e:
                raise self.fail(f"fixed.{path}", str(e)) from None
            flat[path] = config.get(base, path)
        try:
            config.validate(base)
        except ConfigError as e:
            raise self.fail("fixed", str(e)) from None
        if base.data.train_on_val:  # the objective is validation accuracy: there must be a split
            raise self.fail("fixed.data.train_on_val", NO_TRAIN_ON_VAL)
        return flat, base

    def params(self, d: Any, fixed: dict[str, Any], base: TrainConfig) -> list[ParamSpec]:
        if not d:
            raise self.fail("search_space", "missing or empty; declare at least one parameter")
        self.mapping("search_space", d)
        params: list[ParamSpec] = []
        for name, entry in d.items():
            p = self.param(f"search_space.{name}", str(name), entry, base)
            for q in params:  # conditions read values set above them; this would change one later
                if q.when and p.path in q.when:
                    raise self.fail(
                        f"search_space.{name}",
                        f"sets {p.path}, which {q.name}'s `when` above reads; move this entry above it",
                    )
            if p.path in fixed:
                raise self.fail(f"search_space.{name}", f"{p.path} is also in `fixed`; keep one")
            self.when(f"search_space.{name}", p, params, base)
            params.append(p)
        return params

    def param(self, key: str, name: str, entry: Any, base: TrainConfig) -> ParamSpec:
        self.mapping(key, entry, PARAM_KEYS)
        path = entry.get("path", name)
        if not isinstance(path, str):
            raise self.fail(f"{key}.path", f"must be a dotted config path, got {path!r}")
        try:
            tp = config.check_path(path)
        except ConfigError as e:
            raise self.fail(key, str(e)) from None
        if path == "data.train_on_val":
            raise self.fail(key, NO_TRAIN_ON_VAL)
        kind = entry.get("type")
        if kind not in ("float", "int", "categorical"):
            raise self.fail(f"{key}.type", f"must be float, int or categorical, got {kind!r}")
        if kind == "categorical":
            extra = [k for k in ("low", "high", "log", "step") if k in entry]
            if extra:
                raise self.fail(f"{key}.{extra[0]}", "does not apply to a categorical; use choices")
            choices = entry.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
            if typing.get_origin(tp) is list:
                raise self.fail(key, f"{path} is a list; set it in `fixed` (Optuna choices are scalars)")
            values = [self.value(f"{key}.choices", path, c, tp, base) for c in choices]
            if len(set(map(repr, values))) < len(values):
                raise self.fail(f"{key}.choices", f"has duplicates: {choices!r}")
            return ParamSpec(path, kind, choices=values, when=entry.get("when"), name=name)
        if "choices" in entry:
            raise self.fail(f"{key}.choices", f"does not apply to type {kind}; use low/high")
        if tp not in (int, float):
            raise self.fail(f"{key}.type", f"{path} is not numeric; use type categorical")
        if kind == "float" and tp is int:
            raise self.fail(f"{key}.type", f"{path} is an integer field; use type int")
        num = int if kind == "int" else float
        if "low" not in entry or "high" not in entry:
            raise self.fail(key, "needs both low and high")
        low = self.value(f"{key}.low", path, entry["low"], num, base)
        high = self.value(f"{key}.high", path, entry["high"], num, base)
        if low >= high:
            raise self.fail(f"{key}.low", f"must be below high, got low={low} high={high}")
        log = entry.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{key}.log", f"must be true or false, got {log!r}")
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"must be > 0 with log: true, got {low}")
        step = entry.get("step")
        if step is not None:
            step = self.value(f"{key}.step", "step", step, num, None)
            if step <= 0:
                raise self.fail(f"{key}.step", f"must be > 0, got {step}")
            if log and not (kind == "int" and step == 1):  # Optuna cannot step a log scale
                raise self.fail(f"{key}.step", "cannot be combined with log: true")
        return ParamSpec(path, kind, low, high, None, log, step, entry.get("when"), name)

    def value(self, key: str, path: str, v: Any, tp: Any, base: TrainConfig | None) -> Any:
        """`v` typed as `tp` and, when `base` is given, inside the config's range at `path`."""
        try:
            v = config.coerce(path, v, tp)
            if base is not None:
                cfg = copy.deepcopy(base)
                config.set_path(cfg, path, v)
                config.validate(cfg)
        except ConfigError as e:
            raise self.fail(key, str(e)) from None
        return v

    def when(self, key: str, p: ParamSpec, earlier: list[ParamSpec], base: TrainConfig) -> None:
        if p.when is None:
            return
        self.mapping(f"{key}.when", p.when)
        if not p.when:
            raise self.fail(f"{key}.when", "is empty; drop it or name a path")
        typed: dict[str, list[Any]] = {}
        for path, values in p.when.items():
            k = f"{key}.when.{path}"
            try:
                tp = config.check_path(path)
            except ConfigError as e:
                raise self.fail(k, str(e)) from None
            if path == p.path:
                raise self.fail(k, "a parameter cannot depend on itself")
            values = values if isinstance(values, list) else [values]
            typed[path] = [self.value(k, path, v, tp, None) for v in values]
            setters = [q for q in earlier if q.path == path]
            if not setters:  # a constant: the default or `fixed`
                if config.get(base, path) not in typed[path]:
                    raise self.fail(
                        k,
                        f"never holds: {path} is fixed to {config.get(base, path)!r} "
                        "(a condition may only use paths set above it or fixed)",
                    )
            elif not any(q.contains(v) for q in setters for v in typed[path]):
                raise self.fail(k, f"none of {values!r} can be suggested for {path}")
        p.when = typed
        for q in earlier:  # one path, several entries: their conditions must exclude each other
            if q.path == p.path and not self.exclusive(p.when, q.when):
                raise self.fail(
                    key, f"sets {p.path} like {q.name}; give both a `when` on one path with disjoint values"
                )

    @staticmethod
    def exclusive(a: dict | None, b: dict | None) -> bool:
        return bool(a and b) and any(p in b and not set(map(repr, a[p])) & set(map(repr, b[p])) for p in a)

    def plugin(
        self,
        key: str,
        d: Any,
        registry: dict[str, type],
        default: str,
        base: TrainConfig,
        params: list[ParamSpec],
    ) -> dict[str, Any]:
        d = {"name": d} if isinstance(d, str) else d  # `sampler: random` is short for {name: random}
        self.mapping(key, d)
        name = d.get("name", default)
        if name not in registry:
            hint = config.nearest_key(str(name), list(registry))
            raise self.fail(f"{key}.name", f"unknown {key} {name!r}{hint}; valid: {', '.join(registry)}")
        allowed = list(inspect.signature(registry[name]).parameters)
        options = {k: v for k, v in d.items() if k != "name"}
        for k in options:
            if k not in allowed:
                valid = ", ".join(allowed) or "none"
                hint = config.nearest_key(str(k), allowed)
                raise self.fail(f"{key}.{k}", f"unknown option for {name}{hint}; valid: {valid}")
        if name in HYPERBAND and "max_resource" not in options:
            # One resource unit = one epoch (the objective reports once per epoch); a searched
            # epoch count leaves Optuna to infer it from the first finished trial.
            searched = any(p.path == "optim.epochs" for p in params)
            options["max_resource"] = "auto" if searched else base.optim.epochs
        return {"name": name, **DEFAULT_OPTIONS.get(name, {}), **options}


# ---------------------------------------------------------------------------------- files, trials
def load_study_file(path: str | Path) -> StudySpec:
    """Read and validate a study file; the name defaults to the file name without .yaml."""
    p = Path(path)
    d = config.read_yaml(p, "study file", StudyError)
    if isinstance(d, dict) and "name" not in d:
        d = {"name": p.stem, **d}
    return StudySpec.from_dict(d, source=str(p))


def default_study_file() -> Path:
    """studies/seed.yaml in the working directory, else in the stl-tune checkout this code runs from.

    A non-editable install has no studies/ next to its code, so running inside a checkout is what
    finds it there. (Shipping studies/ as package data would make it work from anywhere.)
    """
    for p in (Path(DEFAULT_STUDY_FILE), Path(__file__).resolve().parents[2] / DEFAULT_STUDY_FILE):
        if p.is_file():
            return p
    raise StudyError(f"no --study given and {DEFAULT_STUDY_FILE} was not found here; pass --study FILE")


def curve_value(curve: list[float | None], objective: str) -> float | None:
    """A trial's value (OBJECTIVES) from its per-epoch validation accuracies: the best epoch's, the
    last epoch's, or the mean of the last 5 epochs' (fewer when the run had fewer). The trial's
    objective (search/worker/objective.py) and the curve simulator (benchmarks/simulate.py) both use it."""
    seen = [v for v in curve if v is not None]
    if not seen:
        return None
    if objective == "best_val_acc":
        return max(seen)
    if objective == "val_acc":
        return curve[-1]
    last = [v for v in curve[-5:] if v is not None]
    return sum(last) / len(last) if last else None


def suggest_config(trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
    """defaults <- spec.fixed <- the trial's suggestions, in file order; validated."""
    cfg = config.from_dict(None, spec.fixed)
    for p in spec.params:
        if p.applies(cfg):
            config.set_path(cfg, p.path, p.suggest(trial))
    return config.validate(cfg)
