"""A real headless Chromium signs in to Open WebUI and finds the served model on the chat page."""

from __future__ import annotations

import pytest

from tests.e2e.browser import signed_in
from tests.e2e.conftest import ARTIFACTS, MODEL_ID, Stack

pytestmark = pytest.mark.e2e

def test_browser_signs_in_and_sees_the_model(llama_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    with signed_in(llama_stack, tmp_path_factory.mktemp("chromium-profile"), "open-webui-failure.png") as page:
        # The chat page's model selector names the served model (DEFAULT_MODELS in compose).
        selector = page.get_by_text(MODEL_ID).first
        selector.wait_for(state="visible", timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "open-webui-chat.png"))
        assert MODEL_ID in page.content()
