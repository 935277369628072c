"""Render README's two pictures from a real run: docs/live_view.png, the live view as `stl-tune run`
draws it in a terminal, and docs/report.png, the first screen of `stl-tune report`.

    python docs/pictures.py   # about a minute on a 2-core CPU

It runs the smoke study (studies/smoke.yaml) on fake data in a temporary folder, through the
command line only, with rich told that its output is a terminal (FORCE_COLOR), so the output holds
each frame of the live view. Needs Playwright and Debian's Chromium, as tests/browser.py does.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
STL_TUNE = [sys.executable, "-m", "stl_tune"]
CHROMIUM = "/usr/bin/chromium"
WIDTH = 100  # terminal columns
# What rich writes before each new frame of a Live display: back to the line's start, then erase
# the previous frame line by line upwards.
NEW_FRAME = re.compile(r"\r(?:\x1b\[2K\x1b\[1A)*\x1b\[2K")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ROW = re.compile(r"│ +(\d+) │ w\d+ ")  # a running trial's row; group: its number
ROW_WITH_VALUE = re.compile(r"│ +\d+ │ w\d+ +│ +\d+/\d+ │ 0\.\d{4} │")


def stl_tune(*args: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run([*STL_TUNE, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def terminal(output: str) -> str:
    """The terminal's last lines at the last frame with a best trial and the most running trials
    that show a validation accuracy: the lines the workers printed above the live view, then the
    view."""
    printed: list[str] = []
    chosen, most = None, 0
    for segment in NEW_FRAME.split(output):
        lines = segment.split("\n")
        start = next((i for i, line in enumerate(lines) if ANSI.sub("", line).startswith("study ")), len(lines))
        printed += [line for line in lines[:start] if line.strip()]
        frame = "\n".join(lines[start:])
        plain = ANSI.sub("", frame)
        valued = len(ROW_WITH_VALUE.findall(plain))
        said = " ".join(ANSI.sub("", line) for line in printed)  # no line yet on a trial in the view
        if valued >= most and " best " in plain and not any(f"trial {n} " in said for n in ROW.findall(plain)):
            chosen, most = "\n".join([*printed[-8:], frame]), valued
    if chosen is None:
        raise SystemExit("no frame with a best trial: run again")
    return chosen


# The report's first screen without the final training and the optimization history: its summary
# table, then the trials' validation curves.
TO_THE_CURVES = """() => {
    const kids = [...document.body.children];
    const from = kids.findIndex(e => e.textContent.startsWith("Final training"));
    const to = kids.findIndex(e => e.textContent.startsWith("Validation accuracy per epoch"));
    kids.slice(from, to).forEach(e => e.remove());
}"""


def screenshot(
    html: str | None, path: Path, out: Path, *, selector: str | None, size: tuple[int, int], script: str | None = None
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        if html is not None:
            page.set_content(html)
        else:
            page.goto(path.as_uri())
            page.wait_for_load_state("networkidle")
        if script is not None:
            page.evaluate(script)
        (page.locator(selector) if selector else page).screenshot(path=str(out))
        browser.close()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="stl-tune-pictures-"))
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": str(WIDTH), "OMP_NUM_THREADS": "1"}
    url = f"sqlite:///{tmp / 'study.db'}"
    stl_tune("data", "fake", "--out", "fake", cwd=tmp)
    study = str(ROOT / "studies" / "smoke.yaml")
    args = ["--trials", "10", "--workers", "2", "--data-dir", "fake", "--storage", url, "--artifacts", "artifacts"]
    out = subprocess.run([*STL_TUNE, "run", "--study", study, *args], cwd=tmp, env=env, capture_output=True)
    (tmp / "run.out").write_bytes(out.stdout)
    out.check_returncode()
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(Text.from_ansi(terminal(out.stdout.decode())))
    svg = console.export_svg(title="stl-tune run --study studies/smoke.yaml --trials 10 --workers 2")
    screenshot(svg, tmp, ROOT / "docs" / "live_view.png", selector="svg", size=(1000, 800))

    stl_tune("export", "--storage", url, "-o", "best.yaml", cwd=tmp)
    stl_tune("train", "--config", "best.yaml", "--seeds", "0,1", "--out", "runs/best", cwd=tmp)
    stl_tune("report", "--storage", url, "--runs", "runs/best", "-o", "report", cwd=tmp)
    screenshot(
        None,
        tmp / "report" / "index.html",
        ROOT / "docs" / "report.png",
        selector=None,
        size=(1200, 1000),
        script=TO_THE_CURVES,
    )
    print(f"wrote docs/live_view.png and docs/report.png (the run is in {tmp})")


if __name__ == "__main__":
    main()
