"""The report's final-training section (`stl-tune report --runs DIR`): what `stl-tune train` left in
a folder, one run (metrics.json) or a --seeds folder (summary.json, a folder per seed, maybe an
ensemble), read and checked before the report writes a file, and drawn as HTML and a confusion-matrix PNG.
Apart from report.py because it reads the trainer's outputs, whose words (status, epochs_run) are
the trainer's, not a trial record's (search/record.py).
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from stl_tune.errors import UserError


class RunsError(UserError):
    """A --runs folder that is not what `stl-tune train` writes."""


@dataclass
class FinalTraining:
    """What `stl-tune train` left in a folder: one run, or a --seeds folder with summary.json."""

    root: Path
    runs: list[dict]  # per seed: seed, dir (under root), status, test_acc, best_val_acc, epochs_run
    summary: dict | None  # summary.json (test_acc_mean, test_acc_std, ensemble, ...); None for one run
    shown: (
        dict | None
    )  # test_acc, per_class_acc, confusion, classes of the model drawn: the ensemble, else the first finished run
    shown_name: str  # which model that is


RUN_KEYS = ("seed", "dir", "status", "test_acc", "best_val_acc", "epochs_run")  # a run in summary.json
MEMBER_KEYS = ("trial", "weight")  # and a member's of `stl-tune ensemble`
MODEL_KEYS = ("test_acc", "per_class_acc", "confusion", "classes")  # metrics.json, summary's ensemble


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunsError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _pick(data, keys: tuple[str, ...], path: Path) -> dict:
    """`keys` of a JSON object that `stl-tune train` wrote into `path`, or a RunsError naming those missing."""
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise RunsError(f"{path} is not what `stl-tune train` writes: no {', '.join(missing)}")
    return {k: data[k] for k in keys}


def read_runs(root: str | Path) -> FinalTraining:
    """The final training in `root`: a --seeds folder (summary.json, a folder per seed) or one run's
    folder (metrics.json); anything else is a RunsError, raised before the report writes a file."""
    root = Path(root)
    if (root / "summary.json").is_file():
        path = root / "summary.json"
        summary = _json(path)
        runs = [
            _pick(r, RUN_KEYS, path) | {k: r[k] for k in MEMBER_KEYS if k in r}
            for r in _pick(summary, ("runs",), path)["runs"]
        ]
        ensemble = summary.get("ensemble")
        if ensemble:
            _pick(ensemble, ("members",), path)  # a RunsError when missing
            return FinalTraining(
                root, runs, summary, _pick(ensemble, MODEL_KEYS, path), "the ensemble of " + _members(ensemble)
            )
        # no ensemble (yet): the first finished seed, whose model.pt train --seeds leaves at the top
        first = next((r for r in runs if r["test_acc"] is not None), None)
        if first is None:
            return FinalTraining(root, runs, summary, None, "")
        path = root / first["dir"] / "metrics.json"
        return FinalTraining(root, runs, summary, _pick(_json(path), MODEL_KEYS, path), f"seed {first['seed']}")
    if (root / "metrics.json").is_file():
        path = root / "metrics.json"
        m = _pick(_json(path), ("status", "epochs_run", "best_val_acc", *MODEL_KEYS), path)
        config = root / "config.yaml"
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed") if config.is_file() else None
        run = {"seed": seed, "dir": ".", **{k: m[k] for k in RUN_KEYS[2:]}}
        shown = {k: m[k] for k in MODEL_KEYS} if m["test_acc"] is not None else None
        return FinalTraining(root, [run], None, shown, "the model")
    if not root.is_dir():
        raise RunsError(f"--runs {root}: no such folder")
    raise RunsError(
        f"--runs {root}: neither summary.json (stl-tune train --seeds, stl-tune ensemble) "
        "nor metrics.json (stl-tune train) is there"
    )


def _members(ensemble: dict) -> str:
    """An ensemble's members, each with its weight when they have weights (`stl-tune ensemble`)."""
    weights = ensemble.get("weights")
    if weights is None:
        return ", ".join(map(str, ensemble["members"]))
    return ", ".join(f"{m} ({w:.2f})" for m, w in zip(ensemble["members"], weights))


def _acc(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _mean_std(summary: dict) -> str:
    """The seeds' mean test accuracy ± its sample std (none for one finished seed)."""
    spread = "" if summary.get("test_acc_std") is None else f" ± {summary['test_acc_std']:.4f}"
    return f"{summary['test_acc_mean']:.4f}{spread}"


def headline(final: FinalTraining) -> str:
    """The test accuracy in a line for the summary: mean ± std over the seeds (over the members of
    `stl-tune ensemble`) and the ensemble's, or the one run's."""
    s = final.summary
    if s is None:
        return "" if final.shown is None else f"{final.shown['test_acc']:.4f} (one run, seed {final.runs[0]['seed']})"
    said = []
    if s.get("test_acc_mean") is not None:
        unit = "members" if any("weight" in r for r in final.runs) else "seeds"
        said.append(f"{_mean_std(s)} over {s['finished']} of {len(final.runs)} {unit}")
    if s.get("ensemble"):
        said.append(f"{final.shown_name}: {_acc(s['ensemble']['test_acc'])}")
    return "; ".join(said)


def section(final: FinalTraining, out: Path) -> str:
    """Test accuracy per seed, their mean ± std and the ensemble's, each run's curves, and the
    confusion matrix of the model shown, copied or drawn into out/final/ so that the page keeps
    working when its folder is moved."""
    from stl_tune.evaluate import plot_confusion  # imports torch: only for a report with --runs

    (out / "final").mkdir()
    with_val = any(r["best_val_acc"] is not None for r in final.runs)  # none when trained on train+val
    weighted = any("weight" in r for r in final.runs)  # `stl-tune ensemble`: a member per trial, weighted
    rows = []
    for r in final.runs:
        name = f"trial {r.get('trial')}" if weighted else r["seed"]
        cells = [html.escape(str(c)) for c in (name, str(r["status"]).replace("_", " "), _acc(r["test_acc"]))]
        cells += [_acc(r["best_val_acc"])] * with_val + [str(r["epochs_run"])]
        cells += [f"{r['weight']:.2f}" if r.get("weight") is not None else ""] * weighted
        curves = final.root / r["dir"] / "curves.png"
        if curves.is_file():
            rel = f"final/{'curves' if r['dir'] == '.' else Path(r['dir']).name + '-curves'}.png"
            shutil.copyfile(curves, out / rel)
            cells.append(f'<a href="{rel}">curves</a>')
        rows.append(cells)
    s = final.summary or {}
    if s.get("test_acc_mean") is not None:
        rows.append(["mean ± std", f"{s['finished']} of {len(final.runs)} finished", _mean_std(s)])
    if s.get("ensemble"):
        rows.append(["ensemble", html.escape(_members(s["ensemble"])), _acc(s["ensemble"]["test_acc"])])
    columns = (
        "trial" if weighted else "seed",
        "status",
        "test accuracy",
        *("best validation",) * with_val,
        "epochs",
        *("weight",) * weighted,
        "",
    )
    table = (
        "<tr>"
        + "".join(f"<th>{c}</th>" for c in columns)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    )
    parts = [f"<h2>Final training <small>{html.escape(str(final.root))}</small></h2>"]
    if s.get("source"):  # `stl-tune ensemble`: which study, and whether its trial models or retrained configs
        parts.append(
            f'<p class="note">An ensemble of study {html.escape(str(s.get("study")))}: {html.escape(s["source"])}.</p>'
        )
    parts.append(f"<table>{table}</table>")
    if final.shown is None:
        parts.append('<p class="note">No run has finished: no confusion matrix yet.</p>')
        return "".join(parts)
    shown, name = final.shown, html.escape(final.shown_name)
    plot_confusion(
        shown["confusion"],
        shown["classes"],
        out / "final" / "confusion.png",
        title=f"{final.shown_name}: test accuracy {shown['test_acc']:.4f}",
    )
    per_class = "".join(f"<th>{html.escape(c)}</th>" for c in shown["classes"])
    accs = "".join(f"<td>{a:.4f}</td>" for a in shown["per_class_acc"])
    parts += [
        f'<h3>Confusion matrix of {name} <small><a href="final/confusion.png">PNG</a></small></h3>',
        f'<img src="final/confusion.png" alt="confusion matrix of {name}">',
        f"<h3>Test accuracy per class, {name}</h3>",
        f'<div class="wide"><table><tr>{per_class}</tr><tr>{accs}</tr></table></div>',
    ]
    return "".join(parts)
