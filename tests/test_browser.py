"""The report page and the dashboard, rendered by a real headless browser (Chromium).

Catches what string checks on the HTML cannot: plotly.js failing to run (or not found beside the
page), plots that stay empty, what plotly draws (legend entries, hover labels, tick labels, font
sizes), images that do not load, script errors, and anything the page tries to fetch from the
network (blocked and reported here).
"""

from __future__ import annotations

import subprocess

import pytest
from browser import chromium, colour_stats, free_port, wait_http
from commands import stl_tune
from optuna.trial import TrialState
from test_report import make_study, render, write_runs

pytestmark = pytest.mark.slow


def test_report_page_draws_its_plots(tmp_path):
    _, out = render(tmp_path, runs=write_runs(tmp_path / "runs"))
    with chromium() as pg:
        pg.page.goto((out / "index.html").as_uri())  # plotly.js comes from the file beside it
        pg.page.wait_for_selector(".plotly-graph-div .main-svg")
        graphs = pg.page.locator(".plotly-graph-div")
        assert graphs.count() == 4  # history, intermediate values, importances, parallel coordinates
        for i in range(graphs.count()):
            graph = graphs.nth(i)
            assert graph.locator(".main-svg").count() >= 1, f"plot {i} was not drawn"
            assert graph.evaluate("div => div.data.length") > 0, f"plot {i} has no data"
        history, curves, _, parallel = (graphs.nth(i) for i in range(4))
        legend = curves.locator(".legendtext").all_text_contents()  # SVG: no inner text
        assert "Trial0" in legend and "Trial6 (pruned)" in legend and len(legend) == 8
        curves.evaluate("div => Plotly.Fx.hover(div, [{curveNumber: 6, pointNumber: 1}])")
        hover = curves.locator(".hoverlayer").text_content()  # plotly's own: "Trial6 (prun...(2, 0.4)"
        assert "Trial6 (pruned)" in hover and "epoch 2: 0.4000" in hover, hover
        for graph in (history, curves):  # trial numbers and epochs
            ticks = graph.locator(".xtick text").all_text_contents()
            assert ticks and all(t.isdigit() for t in ticks), ticks
        sizes = parallel.locator(".annotation-text").evaluate_all(
            "ts => ts.map(t => parseFloat(getComputedStyle(t).fontSize))"
        )
        assert sizes and min(sizes) >= 12, sizes  # axis tick labels
        final = pg.page.get_by_role("heading", name="Final training")
        assert final.is_visible()
        section = pg.page.inner_text("body")
        assert "0.7333 ± 0.0334" in section and "the ensemble of seed-0, seed-1, seed-2" in section
        matrix = pg.page.locator('img[src="final/confusion.png"]')
        assert matrix.evaluate("img => img.complete && img.naturalWidth") > 100  # loaded from disk
        image = pg.screenshot(tmp_path / "report.png")
        assert pg.errors == [], f"script errors: {pg.errors}"
        assert pg.external == [], f"the page fetched from the network: {pg.external}"
    distinct, colourful = colour_stats(image)
    assert distinct > 500 and colourful > 0.01, f"page looks blank: {distinct} colours, {colourful:.2%} coloured"


def test_dashboard_shows_the_study_and_its_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_study(url)
    port = free_port()
    server = subprocess.Popen(
        stl_tune("dashboard", gpus=None, storage=url, port=port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/studies", server)
        with chromium() as pg:
            pg.page.goto(f"{base}/dashboard/studies/{study._study_id}")
            pg.page.get_by_text(f"Best Trial (number={study.best_trial.number})").wait_for()
            pg.page.wait_for_selector(".main-svg")  # its plots drew
            assert study.study_name in pg.page.inner_text("body")
            distinct, colourful = colour_stats(pg.screenshot(tmp_path / "dashboard.png"))
            assert distinct > 500 and colourful > 0.01, "the study page looks blank"

            pg.page.goto(f"{base}/dashboard/studies/{study._study_id}/trials")
            pg.page.get_by_text(f"{len(study.trials)} Trials").wait_for()
            listing = pg.page.inner_text("body")
            pg.screenshot(tmp_path / "trials.png")
            for t in study.trials:
                assert f"Trial {t.number}" in listing
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                assert state.name.capitalize() in listing
            assert pg.errors == [], f"script errors: {pg.errors}"
            assert pg.external == [], f"the dashboard fetched from the network: {pg.external}"
    finally:
        server.terminate()
        server.wait(timeout=10)
