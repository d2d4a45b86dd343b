"""A real headless Chromium signs in to Open WebUI and finds the served model on the chat page."""

from __future__ import annotations

import contextlib
import shutil

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # a dev dependency: never skipped
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import ARTIFACTS, MODEL_ID, Stack, need, secrets

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_browser_signs_in_and_sees_the_model(llama_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    chromium = shutil.which("chromium")
    need(chromium is not None, "Debian's chromium is not installed (scripts/provision/browser.sh)")
    creds = secrets(llama_stack)
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{llama_stack.webui_port}/auth", wait_until="networkidle")
            page.fill("input[type=email]", creds["DEPLOYKIT_ADMIN_EMAIL"])
            page.fill("input[type=password]", creds["DEPLOYKIT_ADMIN_PASSWORD"])
            page.click("button[type=submit]")
            page.wait_for_url("**/", timeout=60_000)
            # A fresh account is greeted with the release notes: close them as a person would.
            notes = page.get_by_text("Okay, Let's Go!")
            with contextlib.suppress(PlaywrightTimeout):
                notes.click(timeout=10_000)
            # The chat page's model selector names the served model (DEFAULT_MODELS in compose).
            selector = page.get_by_text(MODEL_ID).first
            selector.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / "open-webui-chat.png"))
            assert MODEL_ID in page.content()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "open-webui-failure.png"))
            raise
        finally:
            browser.close()
