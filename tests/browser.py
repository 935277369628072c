"""Helpers for tests that start stl-tune servers and look at pages in headless Chromium.

The browser is Debian's /usr/bin/chromium driven by Playwright. Playwright is only the driver here:
it never downloads a browser (`playwright install` is not run). Tests skip, saying why, when the
Playwright package or the chromium binary is missing.
"""

from __future__ import annotations

import io
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")  # apt-get install chromium (Debian; .ci/run installs it)
# Root in a container needs --no-sandbox; the rest keep a browser on a closed network from phoning home.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


@dataclass
class Page:
    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    external: list[str] = field(default_factory=list)  # requests to anything but file:// or localhost

    def screenshot(self, path: Path):
        """Full-page PNG at `path`, also returned as a PIL image."""
        from PIL import Image

        data = self.page.screenshot(path=str(path), full_page=True)
        return Image.open(io.BytesIO(data)).convert("RGB")


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A fresh headless page that records script errors and blocks (and records) external requests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the driver only)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            out = Page(page)
            page.on("console", lambda m: out.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.errors.append(str(e)))

            def route(r):
                url = r.request.url
                if url.startswith(("file://", "data:", "blob:", "http://127.0.0.1", "http://localhost")):
                    return r.continue_()
                out.external.append(url)
                return r.abort()

            page.route("**/*", route)
            yield out
        finally:
            browser.close()


def colour_stats(image) -> tuple[int, float]:
    """(distinct colours, share of pixels with a clear hue): a blank or text-only page has few of
    either; drawn plots (coloured lines, markers, colour scales) have many."""
    rgb = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.int32)
    hsv = np.asarray(image.convert("HSV")).reshape(-1, 3)
    distinct = np.count_nonzero(np.bincount(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))
    return distinct, float(((hsv[:, 1] > 60) & (hsv[:, 2] > 60)).mean())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until `url` answers 200, or fail with the server's output if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")
