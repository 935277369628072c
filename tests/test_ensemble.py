"""The final model as an ensemble of a search's trials (issue 23): greedy selection on hand-made
predictions; what completed trials keep, within the bound of keep_models; and `stl-tune ensemble`
end to end from the command line, of the trial models and of retrained members, loaded by
load_model, scored by evaluate, used by predict and shown by report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from PIL import Image
from typer.testing import CliRunner

import stl_tune
from stl_tune.cli import app
from stl_tune.data import read_stl10_split
from stl_tune.errors import StudyError
from stl_tune.outputs import Ensemble
from stl_tune.search import optuna_compat as compat
from stl_tune.search import record
from stl_tune.search.worker.ensemble import greedy_selection, select
from stl_tune.search.worker.keep import MODEL, PREDICTIONS, Keeper, Kept, artifact_id, kept

runner = CliRunner()


# ------------------------------------------------------------------------------- greedy selection
def two_classes(p_first: list[float]) -> torch.Tensor:
    """[N, 2] probabilities from each image's probability of class 0."""
    p = torch.tensor(p_first)
    return torch.stack([p, 1 - p], 1)


# Five images of class 0. A is right on four (the best single model, by its log-likelihood over C,
# which is right on the same four); B is right on three only, but on the one A and C miss.
A = two_classes([0.9, 0.9, 0.9, 0.9, 0.3])
B = two_classes([0.3, 0.3, 0.6, 0.6, 0.95])
C = two_classes([0.95, 0.95, 0.95, 0.95, 0.1])
FIVE = torch.zeros(5, dtype=torch.long)


def test_greedy_selection_adds_the_model_that_fixes_the_best_ones_mistakes():
    probs = torch.stack([A, B, C])
    assert greedy_selection(probs, FIVE, max_members=5, rounds=1) == [1, 0, 0]  # A, the best alone
    # then B, not C: A + C still misses image 5, A + B gets all five
    assert greedy_selection(probs, FIVE, max_members=5, rounds=2) == [1, 1, 0]
    # more rounds weigh A and B to raise the likelihood of the right class; C never comes in
    counts = greedy_selection(probs, FIVE, max_members=5)
    assert counts[2] == 0 and counts[0] > counts[1] > 0
    assert greedy_selection(torch.stack([C, B, A]), FIVE, max_members=5) == counts[::-1]  # not by position


def test_greedy_selection_of_one_member_is_the_best_single_model():
    assert greedy_selection(torch.stack([B, C, A]), FIVE, max_members=1) == [0, 0, 1]


def test_greedy_selection_is_never_worse_than_the_best_model_on_validation():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = torch.rand(6, 40, 4, generator=gen).softmax(-1)
        labels = torch.randint(0, 4, (40,), generator=gen)
        counts = greedy_selection(probs, labels, max_members=3)
        assert 1 <= sum(c > 0 for c in counts) <= 3
        mix = sum(c * p for c, p in zip(counts, probs)) / sum(counts)
        best = max((p.argmax(1) == labels).float().mean() for p in probs)
        assert (mix.argmax(1) == labels).float().mean() >= best


def write_predictions(folder: Path, tid: int, probs: torch.Tensor, labels: torch.Tensor, split: str, size=16) -> Path:
    path = folder / artifact_id(tid, PREDICTIONS)
    torch.save(
        {
            "probs": probs.half(),
            "labels": labels,
            "split": split,
            "seed": 0,
            "val_fraction": 0.1,
            "classes": ["a", "b"],
            "image_size": size,
        },
        path,
    )
    return path


def test_select_combines_only_trials_of_the_best_trials_split_and_image_size(tmp_path):
    trial = optuna.trial.create_trial(value=0.9, params={}, distributions={})
    kept_ = [  # best first, as keep.kept lists them
        Kept(trial, write_predictions(tmp_path, 1, A, FIVE, "s0"), tmp_path / "m1"),
        Kept(trial, write_predictions(tmp_path, 2, B, FIVE, "s1"), tmp_path / "m2"),  # another seed's split
        Kept(trial, write_predictions(tmp_path, 3, B, FIVE, "s0", size=24), tmp_path / "m3"),  # another size
        Kept(trial, write_predictions(tmp_path, 4, C, FIVE, "s0"), None),  # its model was not kept
        Kept(trial, write_predictions(tmp_path, 5, B, FIVE, "s0"), tmp_path / "m5"),
    ]
    s = select(kept_, max_members=5, need_models=True)
    counts = greedy_selection(torch.stack([A, B]).half(), FIVE, 5)  # A and B, as stored: all that is left
    assert [(k.predictions.name, w) for k, w in s.members] == [
        (artifact_id(1, PREDICTIONS), counts[0] / sum(counts)),
        (artifact_id(5, PREDICTIONS), counts[1] / sum(counts)),
    ]
    assert (s.candidates, s.other_split, s.without_model) == (2, 2, 1)
    assert s.val_acc == 1.0 and s.best_single_val_acc == 0.8
    assert "5 validation images (seed 0, val_fraction 0.1) at 16 px" == s.split
    # retrained members need no kept model: C is a candidate then
    assert select(kept_, 5, need_models=False).candidates == 3
    with pytest.raises(StudyError, match="none of them has its weights kept"):
        select([kept_[3]], 5, need_models=True)
    with pytest.raises(StudyError, match="no completed trial kept its validation predictions"):
        select([], 5, need_models=False)


# ------------------------------------------------------------------------------ the best K kept
def test_the_best_k_models_stay_whoever_prunes_first(tmp_path):
    """Trials finish their runs (RUNNING, value in their kept attr), upload, then rank: whatever the
    order of the uploads and the rankings, K model files stay, the best; a trial that failed after
    its upload loses its files."""
    study = optuna.create_study(direction="maximize")
    folder = tmp_path / "artifacts"
    keeper = Keeper(folder, tmp_path, k=2)
    values = [0.5, 0.8, 0.6, 0.9, 0.7]
    trials = [study.ask() for _ in values]

    def upload(t, value):
        t.set_user_attr(record.KEPT_ATTR, {"value": value})
        for kind in (PREDICTIONS, MODEL):
            (folder / artifact_id(compat.trial_id(t), kind)).write_bytes(b"x")

    upload(trials[0], values[0])
    upload(trials[1], values[1])
    upload(trials[2], values[2])
    assert keeper.prune(study) == [artifact_id(compat.trial_id(trials[0]), MODEL)]  # 0.5, below 0.8 and 0.6
    study.tell(trials[1], values[1])  # told COMPLETE: ranked by its value from here on
    upload(trials[3], values[3])
    upload(trials[4], values[4])
    (folder / f".partial-{artifact_id(compat.trial_id(trials[2]), MODEL)}").write_bytes(b"x")  # a second, cut short
    study.tell(trials[2], state=TrialState.FAIL)  # failed as stale after its upload
    keeper.prune(study)
    keeper.prune(study)  # a second worker's ranking of the same folder removes nothing more
    models = sorted(f.name for f in folder.iterdir() if f.name.endswith(MODEL))
    assert models == sorted(artifact_id(compat.trial_id(trials[i]), MODEL) for i in (1, 3))  # 0.8, 0.9
    assert not any(f"ensemble-{compat.trial_id(trials[2])}-" in f.name for f in folder.iterdir())
    assert Keeper(folder, tmp_path, k=0).prune(study) and not any(f.name.endswith(MODEL) for f in folder.iterdir())


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def searched(fake_data, tmp_path_factory):
    """A finished tiny study of 4 trials of 3 epochs that learn a little, keeping the best 2 models."""
    root = tmp_path_factory.mktemp("ensemble-study")
    study_file = root / "tiny.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "keep_models": 2,
                "search_space": {
                    "optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                    "model.se": {"type": "categorical", "choices": [True, False]},
                },
                "fixed": {
                    "data": {"dir": str(fake_data), "image_size": 16},
                    "model": {"width": 4, "blocks": [1, 1, 1, 1]},
                    "optim": {"epochs": 3, "batch_size": 16, "warmup_epochs": 1},
                    "augment": {"randaugment_ops": 0, "mix_epochs": 0},
                    "ema": {"decay": 0.9},
                    "runtime": {"device": "cpu"},
                },
                "sampler": {"name": "random", "seed": 0},
                "pruner": {"name": "none"},
            }
        )
    )
    url = f"sqlite:///{root}/study.db"
    r = runner.invoke(app, ["run", "--study", str(study_file), "--storage", url, "--trials", "4", "--gpus", "none"])
    assert r.exit_code == 0, r.output
    return url, root / "artifacts", optuna.load_study(study_name="tiny", storage=url)


@pytest.mark.slow
def test_completed_trials_keep_predictions_and_the_best_k_models(searched):
    url, folder, study = searched
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    found = kept(study, folder)
    assert [k.trial.number for k in found] == [
        t.number for t in sorted(complete, key=lambda t: (-t.value, t.number))
    ]  # every completed trial, best first
    assert [k.model is not None for k in found] == [True, True, False, False]  # the best 2 only
    assert sum(f.name.endswith(MODEL) for f in folder.iterdir()) == 2
    saved = torch.load(found[0].predictions, weights_only=True)
    assert saved["probs"].dtype == torch.float16 and saved["probs"].shape == (20, 10)  # 10 % of 200 images
    assert torch.allclose(saved["probs"].float().sum(1), torch.ones(20), atol=1e-2)
    # the predictions are those of the model file kept, on the trial's own validation split (flip TTA)
    from stl_tune.data import load_data
    from stl_tune.train import predict_logits

    model = stl_tune.load_model(found[0].model)
    ds = load_data(model.config.data, model.config.seed)
    logits = predict_logits(model, ds.images, model.config, torch.device("cpu"), ds.val)
    assert torch.allclose(logits.softmax(1), saved["probs"].float(), atol=2e-3)
    assert torch.equal(saved["labels"], ds.labels[ds.val])
    status = runner.invoke(app, ["status", "--storage", url])
    assert status.exit_code == 0, status.output
    assert "validation predictions of 4 trials" in status.output
    assert re.search(r"the weights of the best 2 \([\d.]+ [kM]B each; keep_models: at most 2\)", status.output)


def test_usage_line_says_when_no_weights_are_kept(tmp_path):
    from stl_tune.search.worker.keep import Usage

    assert Usage(3, 3000, 0, 0).line(5, tmp_path).endswith("no trial weights yet (keep_models: at most 5)")
    assert Usage(3, 3000, 0, 0).line(0, tmp_path).endswith("no trial weights (keep_models: 0)")


def write_test_images(fake_data: Path, root: Path, classes: list[str]) -> Path:
    """fake STL-10's test images as root/<class>/<i>.png (a class-layout folder: evaluate scores them all)."""
    x, y = read_stl10_split(fake_data, "test")
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(x[y == c]):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread", "image_cache")
@pytest.mark.parametrize("way", ["--trial-models", "--retrain"])
def test_ensemble_end_to_end(searched, fake_data, tmp_path, way):
    url, folder, study = searched
    out = tmp_path / "ens"
    r = runner.invoke(app, ["ensemble", "--storage", url, "--out", str(out), "--members", "3", way])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    e = summary["ensemble"]
    assert summary["study"] == "tiny" and 2 <= len(e["members"]) <= 3  # two or more: the weights below have teeth
    assert (
        e["members"] == [run["dir"] for run in summary["runs"]] == [f"trial-{run['trial']}" for run in summary["runs"]]
    )
    assert sum(e["weights"]) == pytest.approx(1.0) and e["weights"] == [run["weight"] for run in summary["runs"]]
    if way == "--trial-models":  # the search's own models: only those of the best 2 are kept
        best2 = {k.trial.number for k in kept(study, folder)[:2]}
        assert {run["trial"] for run in summary["runs"]} <= best2
        assert summary["source"] == "the search's trial models"
    else:  # each member's config trained on train+validation, as `train` lays a run out
        for run in summary["runs"]:
            assert {"config.yaml", "metrics.json", "model.pt", "curves.png"} <= {
                p.name for p in (out / run["dir"]).iterdir()
            }
            assert yaml.safe_load((out / run["dir"] / "config.yaml").read_text())["data"]["train_on_val"] is True
        again = runner.invoke(app, ["ensemble", "--storage", url, "--out", str(out), "--members", "3", way])
        assert again.exit_code == 0 and again.output.count("holds a finished run") == len(summary["runs"])  # resumable

    # load_model: an Ensemble of the members with their weights
    model = stl_tune.load_model(out / "ensemble.pt")
    assert isinstance(model, Ensemble) and model.weights == pytest.approx(e["weights"])
    assert (out / "model.pt").read_bytes() == (out / "ensemble.pt").read_bytes()

    # evaluate: the test images as a folder score as the ensemble scored on the test split
    images = write_test_images(fake_data, tmp_path / "test-images", model.classes)
    ev = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(out / "ensemble.pt"),
            "--data-dir",
            str(images),
            "--out",
            str(tmp_path / "ev"),
            "--device",
            "cpu",
        ],
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == pytest.approx(e["test_acc"])

    # predict: one row per image, the class evaluate counts
    pr = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(out / "ensemble.pt"),
            "--images",
            str(images),
            "-o",
            str(tmp_path / "p.csv"),
            "--device",
            "cpu",
        ],
    )
    assert pr.exit_code == 0, pr.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 100
    right = sum(Path(row["file"]).parent.name == row["class"] for row in rows)
    assert right / 100 == pytest.approx(e["test_acc"])

    # report --runs: its members and their weights
    rep = runner.invoke(app, ["report", "--storage", url, "--runs", str(out), "-o", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "An ensemble of study tiny" in page
    n = len(summary["runs"])
    assert f" over {n} of {n} members; the ensemble of " in page  # its members, not seeds
    assert f"stl-tune evaluate --model {out / 'ensemble.pt'} --data-dir DIR" in page  # next: use it
    assert "stl-tune export" not in page  # ... not make another
    for run in summary["runs"]:
        assert f"<td>trial {run['trial']}</td>" in page and f"{run['dir']} ({run['weight']:.2f})" in page
