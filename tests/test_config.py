import re

import pytest

from stl_tune import config as C


def test_defaults_are_the_known_run():
    cfg = C.TrainConfig()
    assert (cfg.model.width, cfg.model.blocks, cfg.optim.name, cfg.optim.epochs, cfg.optim.batch_size) == (
        64,
        [2, 2, 2, 2],
        "adamw",
        200,
        64,
    )
    assert cfg.seed == 0 and cfg.data.val_fraction == 0.1


def test_yaml_round_trip(tmp_path):
    cfg = C.from_dict({"model": {"width": 32, "se": False}}, {"optim.lr": "3e-4", "model.blocks": "[1, 2, 2, 1]"})
    path = tmp_path / "c.yaml"
    C.dump(cfg, path, header="# header\n")
    assert path.read_text().startswith("# header\n")
    again = C.load(path)
    assert again == cfg
    assert (again.model.width, again.model.se, again.optim.lr, again.model.blocks) == (32, False, 3e-4, [1, 2, 2, 1])


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        ({"model": {"widht": 3}}, {}, "unknown config key 'model.widht' (did you mean model.width?)"),
        (None, {"width": "8"}, "did you mean model.width?"),
        ({"optim": {"name": "adam"}}, {}, "optim.name must be one of adamw, sgd"),
        ({"optim": {"lr": -1}}, {}, "optim.lr=-1.0 is out of range"),
        ({"model": {"width": 1.5}}, {}, "model.width must be an integer"),
        ({"model": {"se": "maybe"}}, {}, "model.se must be true or false"),
        ({"model": 3}, {}, "'model' must be a section of keys"),
        ({"model": {"blocks": [2, 0]}}, {}, "model.blocks must be 1..64"),
        ({"data": {"val_fraction": 0.0}}, {}, "data.val_fraction must be > 0"),
        ({"runtime": {"device": "tpu"}}, {}, "runtime.device must be"),
        ([1, 2], {}, "a config must be a mapping"),
    ],
)
def test_bad_configs_get_one_clear_line(data, overrides, message):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(data, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {width: [\n")
    with pytest.raises(C.ConfigError, match=r"not valid YAML \(line"):
        C.load(bad)
    with pytest.raises(C.ConfigError, match="--set expects key=value"):
        C.load(None, ["optim.lr"])


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load(evil)


def test_every_number_declares_its_range_and_validate_enforces_it():
    types = C.field_types()
    ranges = C.field_ranges()
    assert sorted(ranges) == sorted(p for p, tp in types.items() if tp in (int, float))
    for path, (lo, hi) in ranges.items():
        for bound, sign in ((lo, -1), (hi, 1)):
            if bound is None:
                continue
            step = 1 if types[path] is int else 1e-9 * max(1.0, abs(bound))
            with pytest.raises(C.ConfigError, match=rf"^{re.escape(path)}=\S+ is out of range \[{lo}, "):
                C.from_dict(None, {path: bound + sign * step})


SWITCHES = ["compile", "amp", "channels_last", "fused"]  # runtime settings: auto (on for CUDA) or forced


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("true", True), ("false", False), (True, True), (False, False)],
)
def test_runtime_switches_are_auto_or_a_boolean(switch, value, expected):
    assert getattr(C.TrainConfig().runtime, switch) == "auto"
    for cfg in (C.from_dict(None, {f"runtime.{switch}": value}), C.from_dict({"runtime": {switch: value}})):
        assert getattr(cfg.runtime, switch) == expected and type(getattr(cfg.runtime, switch)) is type(expected)


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("value", [1, "1", "maybe", "Auto"])
def test_runtime_switches_refuse_other_values(switch, value):
    with pytest.raises(C.ConfigError, match=rf"runtime.{switch} must be one of auto, true, false, got"):
        C.from_dict(None, {f"runtime.{switch}": value})


def test_string_choices_are_not_read_as_yaml(tmp_path):
    # "on"/"off" would be YAML booleans: a string-only choice list keeps strings as they are
    with pytest.raises(C.ConfigError, match="optim.name must be one of adamw, sgd, got 'on'"):
        C.from_dict(None, {"optim.name": "on"})
    assert C.from_dict(None, {"smoothing.shape": "cosine"}).smoothing.shape == "cosine"
    path = tmp_path / "old.yaml"
    path.write_text("runtime: {compile: false}\n")  # configs written when compile was a boolean
    assert C.load(path).runtime.compile is False
    assert C.load(path, ["runtime.compile=auto"]).runtime.compile == "auto"
