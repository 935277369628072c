"""stl-tune report: a study with complete, pruned and failed trials rendered to a page that opens from disk."""

from __future__ import annotations

import copy
import logging
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image
from typer.testing import CliRunner

from stl_tune import config as C
from stl_tune.cli import app

DISTRIBUTIONS = {
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
    "model.width": IntDistribution(4, 16, step=4),
    "optim.name": CategoricalDistribution(["adamw", "sgd"]),
}


def make_study(url: str, name: str = "demo", complete: int = 6, more_attrs: dict | None = None) -> optuna.Study:
    """`complete` finished trials, two pruned ones (with epoch curves) and one failed, as workers leave
    them: params, per-epoch intermediate values and the stl-tune user attrs (no training needed);
    more_attrs: {trial number: user attrs to add}."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for i in range(complete + 3):
        params = {
            "optim.lr": 10 ** (-3 + 0.25 * (i % 5)),
            "model.width": 4 + 4 * (i % 3),
            "optim.name": ["adamw", "sgd"][i % 2],
        }
        cfg = C.from_dict(None, params)
        state = TrialState.COMPLETE if i < complete else TrialState.PRUNED if i < complete + 2 else TrialState.FAIL
        epochs = 4 if state == TrialState.COMPLETE else 2
        curve = [round(0.1 + 0.05 * i * (e + 1) / epochs, 4) for e in range(epochs)]
        attrs = {
            "config": C.to_dict(cfg),
            "curve": curve,
            "epochs_run": epochs,
            "seconds": 3.0 + i,
            "param_count": 1234,
            "device": "cpu",
            "status": state.name.lower(),
            "fail_reason": "diverged" if state == TrialState.FAIL else None,
            **(more_attrs or {}).get(i, {}),
        }
        study.add_trial(
            create_trial(
                state=state,
                value=max(curve) if state == TrialState.COMPLETE else None,
                params=params,
                distributions=DISTRIBUTIONS,
                user_attrs=attrs,
                intermediate_values={} if state == TrialState.FAIL else dict(enumerate(curve, 1)),
            )
        )
    return study


CLASSES = ["airplane", "bird", "cat"]


def _run(out: Path, seed: int, test_acc: float | None) -> None:
    """One `stl-tune train` output folder, written by the trainer's own writer (no training)."""
    from stl_tune.outputs import write_outputs
    from stl_tune.train import TrainResult

    cm = [[8, 1, 1], [2, 7, 1], [0, 3, 7]]
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_acc": None, "lr": 1e-3, "label_smoothing": 0.1} for e in (1, 2, 3)
    ]
    result = TrainResult(
        status="completed" if test_acc is not None else "diverged",
        epochs_run=3,
        best_val_acc=None,
        val_acc=None,
        history=history,
        test_acc=test_acc,
        classes=CLASSES,
        per_class_acc=[0.8, 0.7, 0.7] if test_acc is not None else None,
        confusion=cm if test_acc is not None else None,
    )
    write_outputs(out, C.from_dict(None, {"seed": seed}), result)


def write_runs(root: Path, accs: dict[int, float | None] | None = None, ensemble: bool = True) -> Path:
    """What `stl-tune train --seeds` leaves (tiny fake metrics): a folder per seed, summary.json
    by the trainer's writer, and (ensemble=True) its `ensemble` entry in the agreed shape;
    accs: {seed: test accuracy, None for a diverged seed}."""
    import json

    from stl_tune.outputs import write_seed_summary
    from stl_tune.train import TrainResult

    accs = {0: 0.7333, 1: 0.7667, 2: 0.7} if accs is None else accs
    for seed, acc in accs.items():
        _run(root / f"seed-{seed}", seed, acc)
    results = {
        seed: TrainResult(
            status="completed" if acc is not None else "diverged",
            epochs_run=3,
            best_val_acc=None,
            val_acc=None,
            test_acc=acc,
        )
        for seed, acc in accs.items()
    }
    summary = write_seed_summary(root, results)
    summary["ensemble"] = None
    if ensemble:
        summary["ensemble"] = {
            "file": "ensemble.pt",
            "members": [f"seed-{s}" for s, a in accs.items() if a is not None],
            "test_acc": 0.8,
            "per_class_acc": [0.9, 0.8, 0.7],
            "classes": CLASSES,
            "confusion": [[9, 1, 0], [1, 8, 1], [0, 3, 7]],
        }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def render(tmp_path: Path, complete: int = 6, runs: Path | None = None) -> tuple[optuna.Study, Path]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_study(url, complete=complete)
    out = tmp_path / "report"
    more = [] if runs is None else ["--runs", str(runs)]
    result = CliRunner().invoke(app, ["report", "--storage", url, "-o", str(out), *more])
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in result.output
    return study, out


class Refs(HTMLParser):
    """Every src/href in the page, and each <script> tag's src."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.script_srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "script" and attrs.get("src"):
            self.script_srcs.append(attrs["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return render(tmp_path_factory.mktemp("report"))


def test_page_is_self_contained(report):
    _, out = report
    page = (out / "index.html").read_text()
    refs = Refs()
    refs.feed(page)
    assert refs.script_srcs == ["plotly.min.js"], "plotly.js once, from beside the page: it opens from disk"
    assert re.search(r"plotly\.js v\d", (out / "plotly.min.js").read_text()) and "plotly.js v" not in page
    assert len(page) < 200_000, f"{len(page):,} characters: plotly.js inlined?"  # 4.8 MB when it was
    assert not [r for r in refs.refs if re.match(r"(https?:)?//", r)], "the page must not load anything from the web"
    for ref in refs.refs:  # every relative link (PNGs, configs, the script) resolves next to the page
        assert (out / ref).is_file(), f"broken link {ref}"


def test_page_shows_study_summary_and_pruned_trials(report):
    study, out = report
    page = (out / "index.html").read_text()
    best = study.best_trial
    assert "demo" in page and f"{best.value:.4f} (trial {best.number})" in page
    assert "6 complete" in page and "2 pruned" in page and "1 fail" in page
    pruned = [t.number for t in study.trials if t.state == TrialState.PRUNED]
    assert all(f"Trial{n} (pruned)" in page for n in pruned)  # their curves are drawn and labelled
    for title in ("Optimization history", "Parameter importances", "Parallel coordinates", "Best trials"):
        assert title in page


def test_best_trials_link_their_configs(report):
    study, out = report
    page = (out / "index.html").read_text()
    links = re.findall(r'href="(configs/trial-(\d+)\.yaml)"', page)
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert [int(n) for _, n in links] == [t.number for t in complete]  # best first, only complete trials
    for (rel, _n), trial in zip(links, complete):  # each the trial's export: the exact config it trained
        want = copy.deepcopy(trial.user_attrs["config"])  # with, set up for final training
        want["data"]["train_on_val"], want["runtime"]["device"] = True, "auto"
        assert C.to_dict(C.load(out / rel)) == want
        assert f"trial {trial.number} (value = {trial.value:.4f})" in (out / rel).read_text()  # export's header


def test_png_plots_are_images(report):
    _, out = report
    for stem in ("history", "intermediate", "importances", "parallel"):
        with Image.open(out / f"{stem}.png") as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
            lo_hi = im.convert("L").getextrema()
            assert lo_hi[0] < lo_hi[1], f"{stem}.png is a blank image"


def test_too_few_trials_skips_importances_with_a_note(tmp_path):
    _, out = render(tmp_path, complete=1)
    page = (out / "index.html").read_text()
    assert page.count("Skipped: needs") == 2 and "the study has 1" in page  # importances, parallel coordinates
    assert not (out / "importances.png").exists() and not (out / "parallel.png").exists()
    assert (out / "history.png").is_file() and (out / "configs" / "trial-0.yaml").is_file()


def test_unknown_study_is_one_line_naming_the_studies(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, complete=1)
    result = CliRunner().invoke(app, ["report", "--storage", url, "--name", "nope", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nope" in result.output and "demo" in result.output  # names the studies there
    assert not (tmp_path / "r").exists()


def _quiet_report(url: str, out: Path) -> str:
    """Run `report`; its output, after checking that neither Python nor Optuna's logger warned."""
    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = records.append
    logging.getLogger("optuna").addHandler(catcher)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(app, ["report", "--storage", url, "-o", str(out)])
    finally:
        logging.getLogger("optuna").removeHandler(catcher)
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []  # plotting's
    assert [r.getMessage() for r in records] == []
    return (out / "index.html").read_text()


def test_study_without_complete_trials_reports_quietly(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, complete=0)  # two pruned trials (with epochs) and a failed one
    page = _quiet_report(url, tmp_path / "report")
    assert page.count("Skipped: needs") == 3 and "needs 1 complete trial," in page  # history too
    assert (tmp_path / "report" / "intermediate.png").is_file()  # the pruned trials' curves
    assert not (tmp_path / "report" / "history.png").exists()


def test_parameter_tried_at_one_value_draws_quietly(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="flat", storage=url, direction="maximize")
    for i in range(3):  # model.width stays 8: an axis from 8 to 8 in the parallel coordinates
        params = {"optim.lr": 10.0 ** -(i + 2), "model.width": 8, "optim.name": "sgd"}
        study.add_trial(create_trial(value=0.1 * i, params=params, distributions=DISTRIBUTIONS))
    page = _quiet_report(url, tmp_path / "report")
    assert "Skipped" in page and "parallel.png" in page  # importances skipped (3 trials), parallel drawn


def test_unwritable_output_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, complete=1)
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(app, ["report", "--storage", url, "-o", str(tmp_path / "file" / "report")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write the report to" in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_storage_is_not_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'none' / 'study.db'}"
    result = CliRunner().invoke(app, ["report", "--storage", url, "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no study storage at" in result.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "r").exists()


def test_page_says_how_the_known_recipe_did_the_warm_start_the_budgets_and_what_to_run_next(tmp_path):
    from datetime import timedelta

    from stl_tune.search.record import COPIED_ATTR, ENQUEUED_ATTR, KNOWN_RECIPE, N_TRIALS_ATTR
    from stl_tune.search.state import limits

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_study(
        url,
        more_attrs={
            0: {ENQUEUED_ATTR: KNOWN_RECIPE},
            1: {ENQUEUED_ATTR: "/x/best.yaml"},
            2: {COPIED_ATTR: "study old, trial 7"},
        },
    )
    study.set_user_attr(N_TRIALS_ATTR, 24)
    limits.set_limits(study, timedelta(hours=2), 5)
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", "--storage", url, "-o", str(out)]).exit_code == 0
    page = (out / "index.html").read_text()

    recipe = study.trials[0]
    rank = sorted((t.value for t in study.trials if t.value is not None), reverse=True).index(recipe.value) + 1
    assert f"trial 0 is the known recipe (the config defaults): {recipe.value:.4f}, rank {rank} of 6 complete" in page
    assert "1 config file(s) queued with --enqueue" in page and "1 finished trials copied from another study" in page
    assert "<td>0 (known recipe)</td>" in page and "<td>1 (queued: best.yaml)</td>" in page
    assert "<td>2 (copied: study old, trial 7)</td>" in page
    assert (
        f"24 trials; time budget: 2 h left (no trial starts after {limits.deadline(study.user_attrs):%Y-%m-%d %H:%M} UTC)"
        in page
    )
    assert (
        "patience: stops after 5 finished trials without a better one (0 so far)" in page
    )  # none run since it was set
    assert (
        "stl-tune confirm --name demo --top 3 --seeds 3" in page and "stl-tune export --name demo -o best.yaml" in page
    )
    assert "7 of the study's 24 trials have finished: the same <code>stl-tune run</code> command continues it" in page
    assert (
        "9 (5 complete, 2 pruned, 1 failed, 1 copied from another study)" in page
    )  # the copied one not counted as run


# ------------------------------------------------------------------------------------- plots
@pytest.fixture(autouse=True)
def _close_figures():
    """The matplotlib figures that drawn() hands to a test, closed after it."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def drawn(study: optuna.Study) -> dict:
    """{plot stem: (plotly figure, matplotlib axes)} as the report draws them."""
    from stl_tune.report import _plots
    from stl_tune.search.optuna_compat import experimental_ok

    with experimental_ok():
        return {stem: tuple(rest) for stem, _, *rest in _plots(study) if not isinstance(rest[0], str)}


def test_curves_are_named_per_trial_in_the_legend_and_on_hover(report):
    study, _ = report
    fig, ax = drawn(study)["intermediate"]
    assert fig.layout.showlegend is True  # Optuna hides it
    names = {t.name: t.hovertemplate for t in fig.data}
    assert set(names) == {f"Trial{n}" for n in range(6)} | {"Trial6 (pruned)", "Trial7 (pruned)"}
    for name, hover in names.items():
        assert hover.startswith(f"{name}<br>epoch %{{x}}")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == sorted(names, key=lambda n: int(n[5:].split()[0]))


def test_epoch_and_trial_axes_tick_at_whole_numbers(report):
    study, _ = report  # 4 epochs and 9 trials: short axes, which both libraries tick at halves
    for stem in ("history", "intermediate"):
        fig, ax = drawn(study)[stem]
        assert fig.layout.xaxis.tick0 == 0 and isinstance(fig.layout.xaxis.dtick, int) and fig.layout.xaxis.dtick >= 1
        assert all(float(x).is_integer() for x in ax.get_xticks()), (stem, ax.get_xticks())


def edge_study(url: str) -> optuna.Study:
    """Where Optuna's parallel coordinates read badly: an integer over 4..6 (ticked 4.5, 5.5), a
    log-sampled lr inside one decade and missing from half the trials (a conditional parameter),
    a numeric categorical."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="edge", storage=url, direction="maximize")
    dists = {
        "model.width": IntDistribution(4, 6),
        "lr_adamw": FloatDistribution(3e-4, 3e-3, log=True),
        "optim.name": CategoricalDistribution(["adamw", "sgd"]),
        "optim.batch_size": CategoricalDistribution([32, 64, 128]),
    }
    for i in range(8):
        params = {
            "model.width": 4 + i % 3,
            "optim.name": ["adamw", "sgd"][i % 2],
            "optim.batch_size": [32, 64, 128][i % 3],
        }
        if i % 2 == 0:
            params["lr_adamw"] = 3.5e-4 * 1.15**i  # 3.5e-4 .. 8.1e-4
        study.add_trial(
            create_trial(
                value=0.5 + 0.03 * i,
                params=params,
                distributions={k: dists[k] for k in params},
                intermediate_values={1: 0.3, 2: 0.5 + 0.03 * i},
            )
        )
    return study


def _luminance(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_parallel_coordinates_tick_whole_numbers_and_log_decades_in_visible_colours(tmp_path):
    study = edge_study(f"sqlite:///{tmp_path / 'study.db'}")
    fig, ax = drawn(study)["parallel"]
    names = list(fig.layout.xaxis.ticktext)
    ticks = {name: [a.text for a in fig.layout.annotations if a.x == i] for i, name in enumerate(names)}
    assert ticks["model.width"] == ["4", "5", "6"]  # Optuna: 4, 4.5, 5, 5.5, 6
    assert ticks["lr_adamw"] == ["None", "0.0004", "0.0005", "0.0006", "0.0007", "0.0008"]  # 1-2-5 would be one tick
    assert ticks["optim.batch_size"] == ["32", "64", "128"] and ticks["optim.name"] == ["adamw", "sgd"]
    assert all(a.font.size >= 12 for a in fig.layout.annotations) and fig.layout.xaxis.tickfont.size >= 12
    lines = [t for t in fig.data if t.customdata is not None]
    assert max(_luminance(t.line.color) for t in lines) < 0.8  # Optuna's worst trial: nearly white (0.98)
    assert [t.customdata[0][1] for t in lines][-1] == "0.71"  # the best trial drawn last, on top

    ax.figure.canvas.draw()
    twins = [a for a in ax.figure.axes if a is not ax and a.get_shared_x_axes().joined(a, ax)]
    png = {name: [t.get_text() for t in twin.get_yticklabels()] for name, twin in zip(names[1:], twins)}
    assert png["model.width"] == ticks["model.width"] and png["lr_adamw"] == ticks["lr_adamw"]
    colours = ax.collections[0].get_colors()  # RGBA per line
    assert max(0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in colours) < 0.8


def test_parallel_coordinates_of_a_wider_log_range_tick_1_2_5(report):
    study, _ = report  # optim.lr from 1e-3 to 1e-2
    fig, _ = drawn(study)["parallel"]
    i = list(fig.layout.xaxis.ticktext).index("optim.lr")
    assert [a.text for a in fig.layout.annotations if a.x == i] == ["0.001", "0.002", "0.005", "0.01"]


# ---------------------------------------------------------------------------- final training
def test_final_training_shows_each_seed_their_mean_the_ensemble_and_its_confusion_matrix(tmp_path):
    _, out = render(tmp_path, runs=write_runs(tmp_path / "runs"))
    page = (out / "index.html").read_text()
    assert (
        "<th>final test accuracy</th><td>0.7333 ± 0.0334 over 3 of 3 seeds; the ensemble of seed-0, seed-1, seed-2: 0.8000</td>"
        in page
    )
    for seed, acc in ((0, "0.7333"), (1, "0.7667"), (2, "0.7000")):
        assert (
            f'<tr><td>{seed}</td><td>completed</td><td>{acc}</td><td>3</td><td><a href="final/seed-{seed}-curves.png">'
            in page
        )
        assert (out / "final" / f"seed-{seed}-curves.png").read_bytes() == (
            tmp_path / "runs" / f"seed-{seed}" / "curves.png"
        ).read_bytes()
    assert "<td>mean ± std</td><td>3 of 3 finished</td><td>0.7333 ± 0.0334</td>" in page
    assert "<td>ensemble</td><td>seed-0, seed-1, seed-2</td><td>0.8000</td>" in page
    assert "Confusion matrix of the ensemble of seed-0, seed-1, seed-2" in page and "best validation" not in page
    assert "<tr><td>0.9000</td><td>0.8000</td><td>0.7000</td></tr>" in page  # the ensemble's per class
    with Image.open(out / "final" / "confusion.png") as im:
        assert im.format == "PNG" and im.convert("L").getextrema()[0] < 100  # drawn, not blank
    refs = Refs()
    refs.feed(page)
    assert "final/confusion.png" in refs.refs and all((out / r).is_file() for r in refs.refs)


def test_final_training_without_an_ensemble_shows_the_first_finished_seed(tmp_path):
    _, out = render(tmp_path, runs=write_runs(tmp_path / "runs", {0: None, 1: 0.75}, ensemble=False))
    page = (out / "index.html").read_text()
    assert "<td>0.7500 over 1 of 2 seeds</td>" in page and "<td>0</td><td>diverged</td><td></td>" in page
    assert "Confusion matrix of seed 1" in page and "<td>ensemble</td>" not in page
    assert "<tr><td>0.8000</td><td>0.7000</td><td>0.7000</td></tr>" in page  # seed 1's metrics.json


def test_final_training_of_one_run(tmp_path):
    _run(tmp_path / "best", seed=3, test_acc=0.75)
    _, out = render(tmp_path, runs=tmp_path / "best")
    page = (out / "index.html").read_text()
    assert "<td>0.7500 (one run, seed 3)</td>" in page and "Confusion matrix of the model" in page
    assert '<tr><td>3</td><td>completed</td><td>0.7500</td><td>3</td><td><a href="final/curves.png">' in page
    assert (out / "final" / "confusion.png").is_file() and (out / "final" / "curves.png").is_file()
    assert f"stl-tune predict --model {tmp_path / 'best' / 'model.pt'} --images DIR" in page
    assert "stl-tune export" not in page  # the final model exists: the next steps use it

    url = f"sqlite:///{tmp_path / 'study.db'}"  # the same report again, without --runs: nothing left over
    assert CliRunner().invoke(app, ["report", "--storage", url, "-o", str(out)]).exit_code == 0
    page = (out / "index.html").read_text()
    assert "Final training" not in page and not (out / "final").exists()
    assert "stl-tune export --name" in page and "stl-tune predict" not in page


@pytest.mark.parametrize("case", ["missing", "empty", "evaluate", "broken", "seeds"])
def test_runs_that_are_not_train_output_are_one_line(tmp_path, case):
    runs = tmp_path / "runs"
    if case != "missing":
        runs.mkdir()
    if case == "evaluate":  # what `stl-tune evaluate` writes: another metrics.json
        (runs / "metrics.json").write_text('{"accuracy": 0.8, "images": 30}')
    elif case == "broken":
        (runs / "metrics.json").write_text('{"test_acc": 0.8,')
    elif case == "seeds":
        (runs / "summary.json").write_text('{"runs": [{"seed": 0}]}')
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, complete=1)
    result = CliRunner().invoke(app, ["report", "--storage", url, "-o", str(tmp_path / "r"), "--runs", str(runs)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and str(runs) in result.output
    want = {
        "missing": "no such folder",
        "empty": "neither summary.json",
        "evaluate": "no status, epochs_run, best_val_acc, test_acc",
        "broken": "cannot read",
        "seeds": "no dir, status, test_acc",
    }[case]
    assert want in result.output
    assert not (tmp_path / "r").exists()  # checked before anything is written
