"""`stl-tune confirm`: the top K trials re-trained with S new seeds as queued trials of NAME.confirm,
their mean ± std stored in the search study, and export taking the best confirmed mean."""

from __future__ import annotations

import statistics

import pytest
from optuna.trial import TrialState

from stl_tune import config
from stl_tune.errors import StudyError
from stl_tune.search import create_or_load_study, load_study, mask_url, open_storage, record, resolve_study_name
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state import confirm as CF
from stl_tune.search.state.export import write_export
from stl_tune.search.state.trials import tally
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import work
from stl_tune.train import train

pytestmark = pytest.mark.usefixtures("single_thread")  # in-process trainings


@pytest.fixture
def searched(storage_url, tmp_path, tiny_study):
    """A search of 3 finished trials, its spec and its storage."""
    spec = StudySpec.from_dict(tiny_study)
    storage = open_storage(storage_url)
    search = create_or_load_study(spec, None, storage)
    work(search, Objective(spec, tmp_path / "artifacts"), 3)
    return search, spec, storage


def test_confirm_retrains_the_top_k_with_new_seeds_once(searched, storage_url, tmp_path):
    search, spec, storage = searched
    study, candidates, seeds = CF.queue_confirmations(search, spec, top=2, n_seeds=2)
    assert seeds == [1, 2] and [t.number for t in candidates] == [
        t.number for t in sorted(search.trials, key=lambda t: -t.value)[:2]
    ]
    assert study.study_name == "tiny.confirm" and resolve_study_name(None, storage) == "tiny"
    confirm_study, confirm_spec = load_study("tiny.confirm", storage)  # as a worker loads it
    work(confirm_study, Objective(confirm_spec, tmp_path / "artifacts"), 4)

    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == 4 and len(trials) == 4
    for t in trials:  # each a candidate's config with a new seed
        source = search.trials[t.user_attrs[record.CANDIDATE_ATTR]]
        assert t.params == {**source.params, "seed": t.params["seed"]}
        assert t.user_attrs["config"]["seed"] == t.params["seed"] and t.user_attrs["epochs_run"] == 2
    summary = CF.summarize(study, search)
    for number, s in summary.items():
        values = sorted(
            (t.params["seed"], t.value) for t in trials if t.user_attrs[record.CANDIDATE_ATTR] == int(number)
        )
        assert s["values"] == [v for _, v in values] and s["seeds"] == [1, 2]
        assert s["mean"] == pytest.approx(statistics.fmean(s["values"]))
        assert s["std"] == pytest.approx(statistics.stdev(s["values"]))
    assert search.user_attrs[record.CONFIRMED_ATTR] == summary

    again, _, _ = CF.queue_confirmations(search, spec, top=2, n_seeds=2)  # the same call again: nothing new to train
    assert len(again.trials) == 4 and tally(again).finished == 4

    best_number, best = CF.best_confirmed(search)
    assert best["mean"] == max(s["mean"] for s in summary.values())
    out = tmp_path / "best.yaml"
    assert write_export(search, None, out).number == best_number
    assert f"confirmed: {best['mean']:.4f} ± {best['std']:.4f} over 2 seeds" in out.read_text()
    assert config.load(out).seed == 0  # the search's seed: the config as searched

    from typer.testing import CliRunner

    from stl_tune.cli import app
    from stl_tune.report import write_report

    r = CliRunner().invoke(app, ["status", "--storage", storage_url], terminal_width=200)
    assert r.exit_code == 0 and "Confirmed with new seeds" in r.output, r.output  # no --name: the search
    assert f"{best['mean']:.4f} ± {best['std']:.4f}" in r.output and f"Best confirmed: trial {best_number}" in r.output

    page = write_report(search, tmp_path / "report").read_text()
    assert f"trial {best_number}: {best['mean']:.4f} ± {best['std']:.4f} over 2 new seeds" in page
    assert page.count(" (2 seeds)</td>") == 2  # the two confirmed rows of the best-trials table


def test_a_failed_confirmation_is_reported_not_replaced_by_a_sampled_trial(searched, tmp_path):
    search, spec, storage = searched
    study, _, _ = CF.queue_confirmations(search, spec, top=1, n_seeds=2)

    def seed_2_fails(cfg, on_epoch_end=None, **kw):
        if cfg.seed == 2:
            raise RuntimeError("CUDA error: an illegal memory access")
        return train(cfg, on_epoch_end, **kw)

    confirm_study, confirm_spec = load_study("tiny.confirm", storage)
    t = work(confirm_study, Objective(confirm_spec, tmp_path / "artifacts", trainer=seed_2_fails), 2)
    assert t.finished == 1 and t.failed == 1
    assert all(record.CANDIDATE_ATTR in tr.user_attrs for tr in study.trials) and len(study.trials) == 2
    assert CF.summarize(study, search)[str(study.trials[0].user_attrs[record.CANDIDATE_ATTR])]["values"] == [
        study.get_trials(states=(TrialState.COMPLETE,))[0].value
    ]


def test_nothing_to_confirm_is_one_line(storage_url, tiny_study):
    spec = StudySpec.from_dict(tiny_study)
    search = create_or_load_study(spec, None, open_storage(storage_url))
    with pytest.raises(StudyError, match="has no complete trial to confirm yet"):
        CF.queue_confirmations(search, spec, top=3, n_seeds=3)


@pytest.mark.slow
def test_confirm_command_trains_on_the_data_the_search_used(
    storage_url, tmp_path, tiny_study, fake_data, worker_env, monkeypatch
):
    """The study file names data that is not on this host; the search ran with --data-dir: confirm
    takes the trials' recorded folder, and leaves nothing behind when data is missing."""
    from typer.testing import CliRunner

    from stl_tune.cli import app

    tiny_study["fixed"]["data"]["dir"] = str(tmp_path / "not-here")
    spec = StudySpec.from_dict(tiny_study)
    url = storage_url
    search = create_or_load_study(spec, None, open_storage(url))
    work(search, Objective(spec, tmp_path / "artifacts", {"data.dir": str(fake_data)}), 2)
    for key in ("TMPDIR", "STL_TUNE_HEARTBEAT_INTERVAL", "STL_TUNE_GRACE_PERIOD", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, worker_env[key])
    args = ["confirm", "--storage", url, "--top", "1", "--seeds", "1", "--workers", "1", "--gpus", "none"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (t,) = load_study("tiny.confirm", open_storage(url))[0].trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["config"]["data"]["dir"] == str(fake_data)
    assert "mean ± std over seeds 1" in r.output and f"--storage {mask_url(url)}" in r.output  # no password

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("stl_tune.data.stl10.download_and_extract_archive", offline)
    r = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path / "missing"), "--name", "tiny", "--top", "2"])
    assert r.exit_code == 2 and "downloading it failed (OSError: no network)" in r.output  # before anything is queued
    assert len(load_study("tiny.confirm", open_storage(url))[0].trials) == 1


def test_status_lists_the_confirmed_means_best_first_in_the_studys_direction(storage_url, tiny_study):
    """A study that minimizes: the lowest confirmed mean first, as export takes it (status listed the
    highest first whatever the direction)."""
    import optuna
    from typer.testing import CliRunner

    from stl_tune.cli import app

    spec = StudySpec.from_dict({**tiny_study, "direction": "minimize"})
    study = create_or_load_study(spec, None, open_storage(storage_url, heartbeat=False))
    for value in (0.5, 0.4, 0.6):
        study.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    means = {"0": 0.3, "1": 0.1, "2": 0.2}
    study.set_user_attr(
        record.CONFIRMED_ATTR, {n: {"mean": m, "std": 0.0, "values": [m], "seeds": [1]} for n, m in means.items()}
    )
    assert CF.best_confirmed(study)[0] == 1
    r = CliRunner().invoke(app, ["status", "--storage", storage_url], terminal_width=200)
    assert r.exit_code == 0, r.output
    confirmed = r.output[r.output.index("Confirmed with new seeds") :]
    rows = [line.split("│")[1].strip() for line in confirmed.splitlines() if line.startswith("│")]
    assert [row for row in rows if row.isdigit()] == ["1", "2", "0"]
    assert "Best confirmed: trial 1" in r.output
