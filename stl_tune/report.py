"""`stl-tune report`: one study as a self-contained HTML page, PNG plots and the best trials' configs.

The page opens from disk without a server or network: plotly.js lies beside it, one file for all
its plots (inlined, it made a 6-trial page 4.8 MB). Written into the output folder:
    index.html               summary, the final training (with --runs), interactive plots, the best
                             trials with links to their configs
    plotly.min.js            the plotly.js that the page's plots run on (plotly.offline.get_plotlyjs)
    <plot>.png               the same plots drawn by matplotlib, for slides and issues
    configs/trial-N.yaml     each listed trial's export (`stl-tune export --trial N`): its resolved
                             config set up for final training; stl-tune train --config <it>
    final/                   with --runs (`stl-tune train` output): the confusion matrix drawn as
                             `stl-tune evaluate` draws it, and each run's curves.png
"""

from __future__ import annotations

import datetime
import html
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.ticker import LogLocator, MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from stl_tune import report_runs
from stl_tune.search import (
    StudyError,
    best_confirmed,
    best_line,
    deadline,
    draw_parallel_coordinate,
    duration,
    experimental_ok,
    parallel_coordinate_axes,
    ranked,
    tally,
    time_left,
    trials_since_best,
    write_export,
)
from stl_tune.search.record import (
    CONFIRMED_ATTR,
    COPIED_ATTR,
    DEVICE_ATTR,
    ENQUEUED_ATTR,
    EPOCHS_RUN_ATTR,
    KNOWN_RECIPE,
    N_TRIALS_ATTR,
    PATIENCE_ATTR,
    PATIENCE_FROM_ATTR,
    SECONDS_ATTR,
    counts,
)

TOP_TRIALS = 10  # rows of the best-trials table, each with its config file
LEGEND_MAX = 20  # trials named in a PNG's legend; more would hide the plot


# ------------------------------------------------------------------------------------- plots
OBJECTIVE = "validation accuracy"  # what every trial reports, per epoch and at its end
# Parallel coordinates' colours, dark = best: viridis without its palest 20 % (yellow vanishes on
# white, as Optuna's Blues does at the worst trial); plotly draws the same 64 colours.
LINE_COLOURS = ListedColormap(colormaps["viridis_r"](np.linspace(0.2, 1.0, 64)), name="report")
FONT_PX = 13  # parallel coordinates' tick labels (Optuna draws them at 10 px); axis names +1


def _integer_x(fig, ax) -> None:
    """Whole-number ticks on the x axis (epochs, trial numbers) of both versions of a plot: left
    alone, plotly and matplotlib tick a short axis at 1.5, 2.5, ..."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs = [x for trace in fig.data for x in (trace.x or ()) if x is not None]
    if xs:  # plotly has no integer-only ticks: a fixed whole step that matplotlib's locator picks
        ticks = MaxNLocator(integer=True).tick_values(min(xs), max(xs))
        fig.update_xaxes(tick0=0, dtick=max(1, round(ticks[1] - ticks[0])))


def _curves(study: optuna.Study, fig, ax):
    """Each trial's validation curve named after it in the legend and on hover, pruned trials'
    dotted and named so (Optuna draws them like completed ones), in both the plotly figure and the
    matplotlib axes, whose legend is kept only while it stays readable."""
    pruned = {f"Trial{t.number}" for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
    for trace in fig.data:
        if trace.name in pruned:
            trace.update(line={"dash": "dot"}, name=f"{trace.name} (pruned)")
        trace.hovertemplate = f"{trace.name}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"
    fig.update_layout(showlegend=True)  # Optuna hides it; plotly scrolls a long one
    for line in ax.lines:
        if line.get_label() in pruned:
            line.set_linestyle(":")
            line.set_label(f"{line.get_label()} (pruned)")
    if 0 < len(ax.lines) <= LEGEND_MAX:
        ax.legend(bbox_to_anchor=(1.05, 1.0), loc="upper left")
    elif ax.get_legend() is not None:
        ax.get_legend().remove()
    for title, xy in (("epoch", "x"), (OBJECTIVE, "y")):
        fig.update_layout({f"{xy}axis_title": title})
        getattr(ax, f"set_{xy}label")(title)
    _integer_x(fig, ax)
    return fig, ax


def _history(study: optuna.Study):
    """Optuna's optimization history, its axes named as the page's other plots."""
    fig = optuna.visualization.plot_optimization_history(study, target_name=OBJECTIVE)
    ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=OBJECTIVE)
    _integer_x(fig, ax)
    return fig, ax


def _ticked(dim):
    """An axis of the parallel coordinates with nice ticks where Optuna spaces five evenly (widths
    at 4.5, an objective at 0.163): whole numbers where every value is one, 1-2-5 per decade on a
    log axis (Optuna ticks only its ends and whole decades); categories keep theirs, one each."""
    missing = dim.range[0] if dim.has_missing else None  # Optuna's "None" tick, below the values
    values = [v for v in dim.values if v != missing]
    lo, hi = min(values), max(values)
    if dim.is_cat or lo == hi:
        return dim

    def inside(ticks) -> list[float]:  # the locators also tick just beyond the ends
        return [float(t) for t in ticks if lo - 1e-9 * (hi - lo) <= t <= hi + 1e-9 * (hi - lo)]

    if dim.is_log:  # values are log10: ticks at 1, 2, 5 x 10^k, or every digit over a narrow range
        for subs in ((1.0, 2.0, 5.0), tuple(range(1, 10))):
            ticks = inside(np.log10(LogLocator(subs=subs).tick_values(10**lo, 10**hi)))
            if len(ticks) >= 3:
                break
        text = [f"{10**t:.3g}" for t in ticks]
    else:
        integer = all(float(v).is_integer() for v in values)
        ticks = inside(MaxNLocator(nbins=5, integer=integer).tick_values(lo, hi))
        text = [f"{t:.0f}" if integer else f"{t:.4g}" for t in ticks]
    if len(ticks) < 2:  # a range too narrow for nice ticks: Optuna's own
        return dim
    keep = 1 if dim.has_missing else 0
    return dim._replace(tickvals=dim.tickvals[:keep] + ticks, ticktext=dim.ticktext[:keep] + text)


def _parallel(study: optuna.Study):
    """Optuna's parallel coordinates (its axes: log scale for log-sampled parameters, one tick per
    category, a None tick where a conditional parameter is missing) re-ticked by _ticked, the best
    trials drawn last (on top) in a colour scale that stays visible on white, labels readable."""
    axes = parallel_coordinate_axes(study, target_name=OBJECTIVE)
    axes = axes._replace(
        dims_objectives=[_ticked(d) for d in axes.dims_objectives],
        dims_params=[_ticked(d) for d in axes.dims_params],
        draw_order=tuple(sorted(axes.draw_order, key=axes.color_values.__getitem__, reverse=axes.reverse_scale)),
    )
    fig, ax = draw_parallel_coordinate(axes)
    cmap = LINE_COLOURS.reversed() if axes.reverse_scale else LINE_COLOURS  # reversed: lower is better
    for trace in fig.data:
        if trace.customdata is not None:  # a trial's line; its first point is the objective, in [0, 1]
            trace.update(line_color=to_hex(cmap(trace.y[0])), line_width=2, opacity=0.8)
        elif trace.marker.colorscale is not None:  # the colour bar
            trace.marker.update(
                colorscale=[[i / (cmap.N - 1), to_hex(cmap(i))] for i in range(cmap.N)], reversescale=False
            )
    fig.update_annotations(font={"size": FONT_PX, "color": "#222"})
    fig.update_xaxes(tickfont_size=FONT_PX + 1)
    lines = ax.collections[0]
    lines.set_cmap(cmap)
    lines.set_linewidth(2)
    twins = [a for a in ax.figure.axes if a is not ax and a.get_shared_x_axes().joined(a, ax)]
    # One twin per axis after the first, ticked as in the plotly version: in Optuna's values (log10
    # on a log axis, which its PNG draws on a log scale of 10**values instead, with matplotlib's ticks).
    for twin, dim in zip(twins, axes.dims_objectives[1:] + axes.dims_params):
        if dim.range[0] < dim.range[1]:  # a flat axis: Optuna draws its lines across the middle
            twin.set_yscale("linear")
            twin.set_ylim(*dim.range)
            twin.set_yticks(dim.tickvals, dim.ticktext)
            twin.minorticks_off()
    ax.figure.set_size_inches(max(6.4, 1.6 * len(twins) + 3), 4.8)  # room for each axis's labels
    return fig, ax


def _plots(study: optuna.Study) -> Iterator[tuple]:
    """(file stem, title, plotly figure, matplotlib axes) per plot, or (stem, title, note) if skipped.
    A plot is skipped where it would say nothing (and Optuna would warn that it cannot)."""
    vis, mpl = optuna.visualization, optuna.visualization.matplotlib
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]

    def need(n: int) -> str | None:
        if len(complete) >= n:
            return None
        return f"needs {n} complete trial{'s' if n > 1 else ''}, the study has {len(complete)}"

    same = None if len({t.value for t in complete}) > 1 else "every complete trial has the same value"
    no_epochs = None if any(t.intermediate_values for t in trials) else "no trial has reported an epoch yet"
    no_params = None if any(t.params for t in complete) else "no complete trial has a searched parameter"
    plots = [  # (stem, title, why it is skipped or None, a function of the study to both versions)
        ("history", "Optimization history", need(1), _history),
        (
            "intermediate",
            "Validation accuracy per epoch (dotted: pruned)",
            no_epochs,
            lambda s: _curves(s, vis.plot_intermediate_values(s), mpl.plot_intermediate_values(s)),
        ),
        (
            "importances",
            "Parameter importances",
            need(5) or same,
            lambda s: (vis.plot_param_importances(s), mpl.plot_param_importances(s)),
        ),
        ("parallel", "Parallel coordinates (colour: validation accuracy)", need(2) or no_params, _parallel),
    ]
    for stem, title, skip, plot in plots:
        yield (stem, title, skip) if skip else (stem, title, *plot(study))


# ------------------------------------------------------------------------------------- table
def best_trials(study: optuna.Study, n: int = TOP_TRIALS) -> list[FrozenTrial]:
    return ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), study.direction)[:n]


def _config_link(study: optuna.Study, trial: FrozenTrial, out: Path) -> str:
    """A link to configs/trial-N.yaml, the trial's export, or why there is none (no stored config,
    or one from an older schema: reported, not written half-right)."""
    rel = f"configs/trial-{trial.number}.yaml"
    try:
        write_export(study, trial.number, out / rel)
    except StudyError as e:
        return f"({html.escape(str(e))})"
    return f'<a href="{rel}">{rel}</a>'


def _table(study: optuna.Study, out: Path) -> str:
    confirmed = study.user_attrs.get(CONFIRMED_ATTR) or {}
    rows = []
    for t in best_trials(study):
        c = confirmed.get(str(t.number))
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        seconds = t.user_attrs.get(SECONDS_ATTR)
        cells = [
            f"{t.number}{html.escape(_origin(t))}",
            f"{t.value:.4f}",
            f"{c['mean']:.4f} ± {c['std']:.4f} ({len(c['values'])} seeds)" if c else "",
            str(t.user_attrs.get(EPOCHS_RUN_ATTR, "")),
            "" if seconds is None else f"{seconds:.0f}",
            html.escape(str(t.user_attrs.get(DEVICE_ATTR, ""))),
            html.escape(params),
            _config_link(study, t, out),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No complete trial yet.</p>"
    columns = ("trial", "objective", "confirmed", "epochs", "seconds", "device", "parameters", "config")
    head = "".join(f"<th>{h}</th>" for h in columns)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _origin(t: FrozenTrial) -> str:
    """Where a trial's config came from, when not from the sampler."""
    if COPIED_ATTR in t.user_attrs:  # first: a copied trial keeps the attrs it had in its own study
        return f" (copied: {t.user_attrs[COPIED_ATTR]})"
    if t.user_attrs.get(ENQUEUED_ATTR) == KNOWN_RECIPE:
        return " (known recipe)"
    if ENQUEUED_ATTR in t.user_attrs:
        return f" (queued: {Path(t.user_attrs[ENQUEUED_ATTR]).name})"
    return ""


# ------------------------------------------------------------------------------------ summary
def _warm_start(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    """How the known recipe did against the search, and what was queued or copied in."""
    said = []
    ranking = ranked(trials, study.direction)
    copied = sum(not counts(t) for t in trials)
    trials = [t for t in trials if counts(t)]
    recipe = [t for t in trials if t.user_attrs.get(ENQUEUED_ATTR) == KNOWN_RECIPE]
    done = [t for t in recipe if t.state == TrialState.COMPLETE]  # a retry keeps the attr: the one that finished
    if done:
        rank = [t.number for t in ranking].index(done[0].number) + 1
        said.append(
            f"trial {done[0].number} is the known recipe (the config defaults): {done[0].value:.4f}, "
            f"rank {rank} of {len(ranking)} complete"
        )
    elif recipe:
        said.append(f"trial {recipe[0].number} is the known recipe (the config defaults), not finished yet")
    files = {
        t.user_attrs[ENQUEUED_ATTR] for t in trials if t.user_attrs.get(ENQUEUED_ATTR, KNOWN_RECIPE) != KNOWN_RECIPE
    }
    if files:
        said.append(f"{len(files)} config file(s) queued with --enqueue")
    if copied:
        said.append(f"{copied} finished trials copied from another study with --from-study (not counted in the budget)")
    return "; ".join(said)


def _budgets(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    """The trial budget, the time budget and patience, as `run` last set them."""
    attrs = study.user_attrs
    said = [f"{attrs[N_TRIALS_ATTR]} trials"] if attrs.get(N_TRIALS_ATTR) else []
    left = time_left(attrs)
    if left is not None:
        at = f"{deadline(attrs):%Y-%m-%d %H:%M} UTC"
        said.append(
            f"time budget spent at {at} (trials running then were paused; the next run resumes them)"
            if left.total_seconds() <= 0
            else f"time budget: {duration(left.total_seconds())} left (no trial starts after {at})"
        )
    patience = attrs.get(PATIENCE_ATTR)
    if patience:
        since = trials_since_best(trials, study.direction, attrs.get(PATIENCE_FROM_ATTR) or 0)
        said.append(f"patience: stops after {patience} finished trials without a better one ({since} so far)")
    return "; ".join(said)


def _next_steps(study: optuna.Study, confirmed: bool, finished: int, final: report_runs.FinalTraining | None) -> str:
    """What to run next on this study, a line each: after a final training (`final`), what to do with
    its model; before one, how to get it."""
    name = html.escape(study.study_name)
    n_trials = study.user_attrs.get(N_TRIALS_ATTR) or 0
    if final is not None and final.shown is not None:
        model = final.root / ("ensemble.pt" if (final.root / "ensemble.pt").is_file() else "model.pt")
        model_arg = html.escape(str(model))
        steps = [
            f"<code>stl-tune evaluate --model {model_arg} --data-dir DIR</code>: score {html.escape(final.shown_name)} "
            "on any folder dataset without retraining;",
            f"<code>stl-tune predict --model {model_arg} --images DIR -o predictions.csv</code>: its classes for "
            "new images;",
            "in Python: <code>stl_tune.load_model(path)</code>.",
        ]
    else:
        steps = [
            (
                f"{finished} of the study's {n_trials} trials have finished: the same <code>stl-tune run</code> command "
                "continues it (paused and queued trials first);"
                if finished < n_trials
                else ""
            ),
            (
                ""
                if confirmed
                else f"<code>stl-tune confirm --name {name} --top 3 --seeds 3</code>: re-train the best 3 "
                "configs with 3 new seeds (and validation splits), so that the export is the config that is good, "
                "not the one that was lucky; "
            ),
            f"<code>stl-tune export --name {name} -o best.yaml</code>: the best {'confirmed ' if confirmed else ''}"
            "trial's full config, set to train on train+validation;",
            "<code>stl-tune train --config best.yaml --seeds 0,1,2</code>: the final models and the test accuracy's "
            "mean ± std (the only step that touches the test split);",
            "<code>stl-tune evaluate --model runs/best/seed-0/model.pt --data-dir DIR</code>: score a trained model on "
            "any folder dataset without retraining.",
        ]
    return "<h2>Next steps</h2><ul>" + "".join(f"<li>{s}</li>" for s in steps if s) + "</ul>"


# -------------------------------------------------------------------------------------- page
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.note { color: #666; font-style: italic; }
.wide { overflow-x: auto; }
img { max-width: 100%; }
"""


def write_report(study: optuna.Study, out: str | Path, *, storage: str = "", runs: str | Path | None = None) -> Path:
    """Write the report of `study` into `out`; returns the page. `storage`: a masked URL to show;
    `runs`: a `stl-tune train` output folder, shown as the final training."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    import plotly.offline

    final = None if runs is None else report_runs.read_runs(runs)  # a bad folder is one line, before any file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "final", ignore_errors=True)  # from an earlier report into this folder
    trials = study.get_trials(deepcopy=False)
    t = tally(study, trials=trials)
    confirmed = best_confirmed(study)
    counted = {
        "complete": t.complete,
        "pruned": t.pruned,
        "failed": t.failed,
        "running": t.running,
        "waiting": t.waiting,
        "copied from another study": t.trials - sum(map(counts, trials)),
    }
    counted["surplus or interrupted"] = t.trials - sum(counted.values())
    summary = [
        ("study", study.study_name),
        ("direction", study.direction.name.lower()),
        ("trials", f"{t.trials} (" + ", ".join(f"{n} {s}" for s, n in counted.items() if n) + ")"),
        ("result", best_line(t.best)),
        ("final test accuracy", final and report_runs.headline(final)),
        (
            "best confirmed",
            f"trial {confirmed[0]}: {confirmed[1]['mean']:.4f} ± {confirmed[1]['std']:.4f} over "
            f"{len(confirmed[1]['values'])} new seeds (stl-tune confirm; export takes it)"
            if confirmed
            else "",
        ),
        ("warm start", _warm_start(study, trials)),
        ("budgets", _budgets(study, trials)),
        ("storage", storage),
        ("generated", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    sections = [] if final is None else [report_runs.section(final, out)]
    bundle = out / "plotly.min.js"  # plotly.js (4.8 MB) beside the page, once for all its plots
    bundle.unlink(missing_ok=True)  # from an earlier report, if this one has no plot
    plotly_js = "directory"  # the first plot's <script src="plotly.min.js">; the others need none
    with experimental_ok(), warnings.catch_warnings():  # optuna.visualization.matplotlib is experimental
        # An axis over equal values (one objective value, a parameter tried at one value): matplotlib
        # widens it itself, which is all the plot needs.
        warnings.filterwarnings("ignore", "Attempting to set identical low and high", UserWarning)
        for stem, title, *drawn in _plots(study):
            if isinstance(drawn[0], str):
                sections.append(f'<h2>{title}</h2><p class="note">Skipped: {html.escape(drawn[0])}.</p>')
                (out / f"{stem}.png").unlink(missing_ok=True)  # from an earlier report into this folder
                continue
            fig, ax = drawn
            ax.figure.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            div = fig.to_html(full_html=False, include_plotlyjs=plotly_js, config={"displaylogo": False})
            if plotly_js:
                bundle.write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
                plotly_js = False
            sections.append(f'<h2>{title} <small><a href="{stem}.png">PNG</a></small></h2>{div}')
    sections.append(f"<h2>Best trials</h2>{_table(study, out)}")
    sections.append(_next_steps(study, confirmed is not None, t.finished, final))
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary if v)
    name = html.escape(study.study_name)
    page = out / "index.html"
    page.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>stl-tune: {name}</title>'
        f"<style>{_CSS}</style></head><body><h1>stl-tune study {name}</h1><table>{rows}</table>"
        + "".join(sections)
        + "</body></html>"
    )
    return page
