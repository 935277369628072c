"""Study files: every kind of mistake is one clear line naming the file and key; suggestions honour
`fixed` and conditions and always give a valid TrainConfig."""

import copy

import optuna
import pytest
import yaml

from stl_tune import config
from stl_tune.errors import StudyError
from stl_tune.search.spec.space import ParamSpec, StudySpec, load_study_file, suggest_config

GOOD = {
    "name": "t",
    "search_space": {
        "optim.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "lr_adamw": {
            "path": "optim.lr",
            "type": "float",
            "low": 1e-4,
            "high": 3e-3,
            "log": True,
            "when": {"optim.name": ["adamw"]},
        },
        "lr_sgd": {
            "path": "optim.lr",
            "type": "float",
            "low": 0.02,
            "high": 0.4,
            "log": True,
            "when": {"optim.name": ["sgd"]},
        },
        "optim.momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optim.name": ["sgd"]}},
        "model.width": {"type": "int", "low": 4, "high": 8, "step": 2},
    },
    "fixed": {"optim": {"epochs": 3}, "model.blocks": [1, 1, 1, 1]},
    "pruner": {"name": "hyperband"},
}


def with_change(change):
    d = copy.deepcopy(GOOD)
    change(d)
    return d


def ss(d):
    return d["search_space"]


# (case id, change to GOOD, text the error must contain besides the file name)
BAD = [
    (
        "unknown path",
        lambda d: ss(d).update({"model.widht": {"type": "int", "low": 4, "high": 8}}),
        ["search_space.model.widht", "did you mean model.width"],
    ),
    (
        "low >= high",
        lambda d: ss(d)["model.width"].update(low=8, high=8),
        ["search_space.model.width.low", "below high"],
    ),
    (
        "log with low <= 0",
        lambda d: ss(d).update({"optim.weight_decay": {"type": "float", "low": 0, "high": 0.1, "log": True}}),
        ["search_space.optim.weight_decay.low", "> 0 with log"],
    ),
    (
        "outside config range",
        lambda d: ss(d).update({"model.drop_path": {"type": "float", "low": 0.0, "high": 1.5}}),
        ["search_space.model.drop_path.high", "out of range"],
    ),
    (
        "categorical type",
        lambda d: ss(d).update({"model.se": {"type": "categorical", "choices": [True, "maybe"]}}),
        ["search_space.model.se.choices", "true or false"],
    ),
    (
        "literal choice",
        lambda d: ss(d)["optim.name"].update(choices=["adamw", "lion"]),
        ["search_space.optim.name.choices", "lion"],
    ),
    (
        "float on int field",
        lambda d: ss(d)["model.width"].update(type="float"),
        ["search_space.model.width.type", "use type int"],
    ),
    (
        "unknown param key",
        lambda d: ss(d)["model.width"].update(stepp=2),
        ["search_space.model.width.stepp", "did you mean step"],
    ),
    ("unknown sampler", lambda d: d.update(sampler={"name": "tpee"}), ["sampler.name", "valid: tpe, random"]),
    (
        "unknown sampler option",
        lambda d: d.update(sampler={"name": "tpe", "n_startup": 3}),
        ["sampler.n_startup", "unknown option", "did you mean n_startup_trials"],
    ),
    (
        "unknown pruner option",
        lambda d: d.update(pruner={"name": "hyperband", "min_resourc": 1}),
        ["pruner.min_resourc", "unknown option", "did you mean min_resource"],
    ),
    (
        "unknown pruner",
        lambda d: d.update(pruner={"name": "asha"}),
        ["pruner.name", "hyperband, hyperband_shared, median, successive_halving, none"],
    ),
    ("unknown top-level key", lambda d: d.update(search_spaces={}), ["search_spaces", "did you mean search_space"]),
    (
        "when unknown path",
        lambda d: ss(d)["optim.momentum"].update(when={"optim.nam": ["sgd"]}),
        ["search_space.optim.momentum.when.optim.nam", "did you mean optim.name"],
    ),
    (
        "when unknown value",
        lambda d: ss(d)["optim.momentum"].update(when={"optim.name": ["sgdd"]}),
        ["search_space.optim.momentum.when.optim.name", "sgdd"],
    ),
    (
        "when never holds",
        lambda d: ss(d)["model.width"].update(when={"model.se": [False]}),
        ["search_space.model.width.when.model.se", "never holds"],
    ),
    (
        "when off the step's grid",  # model.width draws 4, 6 or 8: a condition on 5 never holds
        lambda d: ss(d).update({"model.se": {"type": "categorical", "choices": [True], "when": {"model.width": [5]}}}),
        ["search_space.model.se.when.model.width", "none of [5] can be suggested for model.width"],
    ),
    (
        "when on a later param",
        lambda d: ss(d)["optim.momentum"].update(when={"model.width": [64]}),
        ["search_space.model.width", "optim.momentum's `when` above reads"],
    ),
    (
        "overlapping conditions",
        lambda d: ss(d)["lr_sgd"].update(when={"optim.name": ["sgd", "adamw"]}),
        ["search_space.lr_sgd", "disjoint"],
    ),
    (
        "fixed and searched",
        lambda d: d["fixed"].update({"model.width": 8}),
        ["search_space.model.width", "also in `fixed`"],
    ),
    ("fixed out of range", lambda d: d["fixed"]["optim"].update(epochs=0), ["fixed", "optim.epochs=0 is out of range"]),
    (
        "fixed unknown key",
        lambda d: d["fixed"].update({"optim.epoch": 3}),
        ["fixed.optim.epoch", "did you mean optim.epochs"],
    ),
    (
        "list path as categorical",
        lambda d: ss(d).update({"model.blocks": {"type": "categorical", "choices": [1]}}),
        ["search_space.model.blocks", "set it in `fixed`"],
    ),
    ("empty space", lambda d: d.update(search_space={}), ["search_space", "at least one"]),
    ("unknown objective", lambda d: d.update(objective="test_acc"), ["objective", "best_val_acc"]),
    ("keep_models negative", lambda d: d.update(keep_models=-1), ["keep_models", "whole number >= 0, got -1"]),
    ("keep_models not a number", lambda d: d.update(keep_models="5"), ["keep_models", "got '5'"]),
    (
        "train_on_val fixed",
        lambda d: d["fixed"].update({"data.train_on_val": True}),
        ["fixed.data.train_on_val", "needs the validation split"],
    ),
    (
        "train_on_val searched",
        lambda d: ss(d).update({"data.train_on_val": {"type": "categorical", "choices": [True, False]}}),
        ["search_space.data.train_on_val", "needs the validation split"],
    ),
]


@pytest.mark.parametrize("change,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_study_file_names_file_and_key(tmp_path, change, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_change(change), sort_keys=False))
    with pytest.raises(StudyError) as e:
        load_study_file(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    for needle in needles:
        assert needle in msg


@pytest.mark.parametrize(
    "text,needle",
    [("- just\n- a list\n", "must be a mapping"), ("name: [unclosed\n", "not valid YAML (line")],
    ids=["not a mapping", "invalid YAML"],
)
def test_unreadable_study_file(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match="bad.yaml: .*" + needle.replace("(", r"\(")):
        load_study_file(path)
    with pytest.raises(StudyError, match="not found"):
        load_study_file(tmp_path / "missing.yaml")


def test_good_file_round_trips_and_defaults_its_name(tmp_path):
    d = copy.deepcopy(GOOD)
    del d["name"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    spec = load_study_file(path)
    assert spec.name == "mine"
    assert spec.fixed == {"optim.epochs": 3, "model.blocks": [1, 1, 1, 1]}
    assert spec.pruner == {"name": "hyperband", "max_resource": 3}  # max_resource = fixed epochs
    assert spec.sampler["name"] == "tpe" and spec.sampler["seed"] == 0
    assert StudySpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    # keep_models: the default is left out of the stored form (a study stored before it existed
    # still matches its file); another value is kept
    assert spec.keep_models == 5 and "keep_models" not in spec.to_dict()
    other = StudySpec.from_dict({**spec.to_dict(), "keep_models": 0})
    assert other.keep_models == 0 and StudySpec.from_dict(other.to_dict()).keep_models == 0


def test_suggest_config_honours_fixed_and_conditions():
    spec = StudySpec.from_dict(copy.deepcopy(GOOD))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(16):
        trial = study.ask()
        cfg = suggest_config(trial, spec)
        config.validate(cfg)
        seen.add(cfg.optim.name)
        assert cfg.optim.epochs == 3 and cfg.model.blocks == [1, 1, 1, 1]
        assert cfg.model.width in (4, 6, 8)
        if cfg.optim.name == "sgd":
            assert set(trial.params) == {"optim.name", "lr_sgd", "optim.momentum", "model.width"}
            assert 0.02 <= cfg.optim.lr <= 0.4 and cfg.optim.lr == trial.params["lr_sgd"]
        else:
            assert set(trial.params) == {"optim.name", "lr_adamw", "model.width"}
            assert 1e-4 <= cfg.optim.lr <= 3e-3
            assert cfg.optim.momentum == config.OptimConfig().momentum  # untouched default
        study.tell(trial, 0.0)
    assert seen == {"adamw", "sgd"}


def test_suggest_config_starts_from_defaults():
    d = copy.deepcopy(GOOD)
    d["fixed"].update({"seed": 7, "augment": {"mix_epochs": 5}})
    cfg = suggest_config(optuna.create_study().ask(), StudySpec.from_dict(d))
    assert cfg.seed == 7 and cfg.augment.mix_epochs == 5 and cfg.optim.epochs == 3
    assert cfg.data == config.TrainConfig().data  # neither fixed nor searched: the defaults


def test_a_param_knows_what_it_holds_its_nearest_value_and_its_largest():
    """The one answer to "is this value inside the space" (warm starts, `when` conditions), to
    "the nearest one that is" (the probe's reference config) and to "the largest" (the data check)."""
    lr = ParamSpec("optim.lr", "float", low=1e-4, high=1e-2, log=True)
    batch = ParamSpec("optim.batch_size", "int", low=32, high=200, step=64)  # draws 32, 96 or 160
    width = ParamSpec("model.width", "int", low=16, high=64)
    se = ParamSpec("model.se", "categorical", choices=[False, True])
    assert lr.contains(1e-3) and not lr.contains(0.1) and not lr.contains(True) and not lr.contains("1e-3")
    assert batch.contains(96) and not batch.contains(64) and width.contains(40)
    assert se.contains(True) and not se.contains("yes")
    assert (lr.clamp(0.1), lr.clamp(1e-3), batch.clamp(8), se.clamp("yes")) == (1e-2, 1e-3, 32, False)
    assert (lr.largest(), batch.largest(), width.largest(), se.largest()) == (1e-2, 160, 64, True)
