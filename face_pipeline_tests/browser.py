"""Shared by the browser tests: Debian's chromium driven by Playwright (the Python package only; never
`playwright install`), screenshots under test-artifacts/ (gitignored), a free local port.

Without /usr/bin/chromium (or the playwright package) a test fails when CI=true and skips elsewhere, saying
what is missing: `apt-get install -y chromium chromium-driver`, `pip install playwright`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def require_chromium() -> Path:
    """The chromium binary, after checking Playwright is importable; fail in CI, skip elsewhere."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"Debian's chromium is not at {CHROMIUM} (apt-get install -y chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is not installed (pip install playwright; no browser download)")
    if missing:
        message = "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message + " (a failure when CI=true)")
    return CHROMIUM


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """A headless chromium (playwright Browser), closed on exit."""
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
