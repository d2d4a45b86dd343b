"""A real headless Chromium (Debian's, driven by Playwright) signed in to a stack's Open WebUI as its admin."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ARTIFACTS, Stack, need, secrets

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def signed_in(stack: Stack, profile: Path, failure_shot: str) -> Iterator[Any]:
    """A page of Chromium signed in to ``stack``'s Open WebUI, its release notes closed as a person would; a
    failure inside leaves a screenshot ``failure_shot`` in test-artifacts/."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # a dev dependency: never skipped
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    need(chromium is not None, "Debian's chromium is not installed (scripts/provision/browser.sh)")
    creds = secrets(stack)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 800},
        )  # fmt: skip
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{stack.webui_port}/auth", wait_until="networkidle")
            page.fill("input[type=email]", creds["DEPLOYKIT_ADMIN_EMAIL"])
            page.fill("input[type=password]", creds["DEPLOYKIT_ADMIN_PASSWORD"])
            page.click("button[type=submit]")
            page.wait_for_url("**/", timeout=60_000)
            with contextlib.suppress(PlaywrightTimeout):  # a fresh account is greeted with the release notes
                page.get_by_text("Okay, Let's Go!").click(timeout=10_000)
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure_shot))
            raise
        finally:
            browser.close()
