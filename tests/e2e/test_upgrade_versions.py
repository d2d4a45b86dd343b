"""`deploykit upgrade` across real Open WebUI releases, and back again (one stack, ports 34860/34861).

The stack starts on the older release provisioned as OPENWEBUI_OLD_IMAGE (open_webui.upgrade_from in
versions.toml, built the same way as the pinned image) with what a lab makes on it: a second account, that
account's chat with its messages, a setting changed through the admin API (stored in the database,
PersistentConfig) and a [webui_env] value. `upgrade` moves it to the pinned OPENWEBUI_IMAGE, whose
migrations run over that data; all of it must be there afterwards (Open WebUI #14272: chats gone after an
upgrade). Going back: Open WebUI's migrations only go forward, so the older image on migrated data would
stop at start-up and restart for ever (#27645's loop); `upgrade` to it is refused, naming the backup it
kept, and `upgrade --restore` with that backup brings the old data back on the old image. The tests run in
file order on the one stack.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    GGUF,
    MODEL_ID,
    Result,
    Stack,
    container_ids,
    deploykit,
    docker,
    make_stack,
    need,
    remove_by_label,
    secrets,
)

pytestmark = pytest.mark.e2e

STUDENT = {"name": "Student", "email": "student@example.com", "password": "a-long-password-1", "role": "user"}
WEBUI_NAME = "Upgrade Lab"
# A chat as Open WebUI's own UI stores it: the message tree (history) and the flat list.
MESSAGES = {
    "m1": {"id": "m1", "parentId": None, "childrenIds": ["m2"], "role": "user", "content": "What is 2 + 2?",
           "timestamp": 1767225600, "models": [MODEL_ID]},
    "m2": {"id": "m2", "parentId": "m1", "childrenIds": [], "role": "assistant", "content": "2 + 2 is 4.",
           "model": MODEL_ID, "timestamp": 1767225601, "done": True},
}  # fmt: skip
# Settings Open WebUI keeps in its database, changed through its admin API on the older release.
ADMIN_CHANGES = {"DEFAULT_USER_ROLE": "user", "ENABLE_COMMUNITY_SHARING": False, "JWT_EXPIRES_IN": "2w"}


def api(stack: Stack, who: dict[str, str] | None = None) -> httpx.Client:
    """Open WebUI's API, signed in as ``who`` (default: the stack's admin)."""
    s = secrets(stack)
    creds = who or {"email": s["DEPLOYKIT_ADMIN_EMAIL"], "password": s["DEPLOYKIT_ADMIN_PASSWORD"]}
    base = f"http://127.0.0.1:{stack.webui_port}"
    r = httpx.post(f"{base}/api/v1/auths/signin", json={"email": creds["email"], "password": creds["password"]},
                   timeout=30, trust_env=False)  # fmt: skip
    assert r.status_code == 200, f"{creds['email']} cannot sign in: {r.status_code} {r.text[:200]}"
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=60,
                        trust_env=False)  # fmt: skip


def webui_version(stack: Stack) -> str:
    with api(stack) as ui:
        return str(ui.get("/api/version").json()["version"])


def running_image(stack: Stack) -> str:
    return docker("inspect", "-f", "{{.Config.Image}}", f"{stack.project}-open-webui-1").strip()


def student_chat(stack: Stack, chat_id: str) -> dict[str, Any] | None:
    """The student's chat as Open WebUI serves it to them, or None when it is not there."""
    with api(stack, STUDENT) as ui:
        r = ui.get(f"/api/v1/chats/{chat_id}")
    return dict(r.json()) if r.status_code == 200 else None


def messages_of(chat: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {k: (m["role"], m["content"]) for k, m in chat["chat"]["history"]["messages"].items()}


def admin_settings(stack: Stack) -> dict[str, Any]:
    with api(stack) as ui:
        config = ui.get("/api/v1/auths/admin/config").json()
    return {key: config.get(key) for key in ADMIN_CHANGES}


def upgrade(stack: Stack, images: dict[str, str], webui: str, *extra: str) -> Result:
    return deploykit(
        "upgrade", "--dir", str(stack.dir), "--image", f"open-webui={webui}",
        "--image", f"inference={images['LLAMACPP_IMAGE']}", *extra, env=stack.env, timeout=1200,
    )  # fmt: skip


def backups(stack: Stack) -> set[Path]:
    return set((stack.dir / "backups").glob("*.tar.gz"))


@pytest.fixture(scope="module")
def old_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The stack on the older Open WebUI, with an account, its chat and changed settings made on it."""
    need("OPENWEBUI_OLD_IMAGE" in engine, "the older Open WebUI image is not built (provision.sh images-webui-old)")
    tmp = tmp_path_factory.mktemp("upgrade")
    stack = make_stack(tmp, "e2e-upgrade", 34860, 34861)
    stack.env["DEPLOYKIT_CONFIG"] = str(tmp / "config.toml")
    (tmp / "config.toml").write_text(f'[webui_env]\nWEBUI_NAME = "{WEBUI_NAME}"\n')
    remove_by_label(f"org.deploykit.stack={stack.project}")
    old = engine["OPENWEBUI_OLD_IMAGE"]
    try:
        stack.up_result = deploykit(
            "up", "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--dir", str(stack.dir),
            "--image", f"inference={engine['LLAMACPP_IMAGE']}", "--image", f"open-webui={old}", "--json",
            env=stack.env, timeout=1200,
        )  # fmt: skip
        assert stack.up_result.code == 0, stack.up_result.err
        with api(stack) as ui:
            added = ui.post("/api/v1/auths/add", json=STUDENT)
            assert added.status_code == 200, added.text
            config = ui.get("/api/v1/auths/admin/config").json()
            changed = ui.post("/api/v1/auths/admin/config", json=config | ADMIN_CHANGES)
            assert changed.status_code == 200, changed.text
        chat = {"title": "arithmetic", "models": [MODEL_ID], "history": {"currentId": "m2", "messages": MESSAGES},
                "messages": list(MESSAGES.values())}  # fmt: skip
        with api(stack, STUDENT) as ui:
            made = ui.post("/api/v1/chats/new", json={"chat": chat})
        assert made.status_code == 200, made.text
        yield {
            "stack": stack,
            "images": engine,
            "old": old,
            "new": engine["OPENWEBUI_IMAGE"],
            "chat": made.json()["id"],
        }
    finally:
        stack.remove()


def test_the_stack_starts_on_the_older_release(old_stack: dict[str, Any]) -> None:
    from deploykit.values.versions import pinned

    stack: Stack = old_stack["stack"]
    assert running_image(stack) == old_stack["old"]
    assert webui_version(stack) == pinned().get("open_webui", "upgrade_from") != pinned().get("open_webui", "version")
    assert messages_of(student_chat(stack, old_stack["chat"]) or {}) == {
        k: (m["role"], m["content"]) for k, m in MESSAGES.items()
    }


def test_upgrade_to_the_pinned_release_keeps_accounts_chats_and_settings(old_stack: dict[str, Any]) -> None:
    from deploykit.values.versions import pinned

    stack: Stack = old_stack["stack"]
    settings_before = admin_settings(stack)
    assert settings_before == ADMIN_CHANGES
    before = backups(stack)
    result = upgrade(stack, old_stack["images"], old_stack["new"], "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["images"]["open-webui"] == [old_stack["old"], old_stack["new"]]
    assert report["up"]["healthy"] is True
    kept = Path(report["backup"])
    assert backups(stack) - before == {kept}
    with tarfile.open(kept, "r:gz") as tar:
        assert "data/webui.db" in tar.getnames()
    old_stack["kept"] = kept

    assert running_image(stack) == old_stack["new"]
    assert webui_version(stack) == pinned().get("open_webui", "version")  # the migrations ran: it serves the data
    chat = student_chat(stack, old_stack["chat"])  # the account signs in, its chat is there, message for message
    assert chat is not None and chat["title"] == "arithmetic"
    assert messages_of(chat) == {k: (m["role"], m["content"]) for k, m in MESSAGES.items()}
    assert chat["chat"]["history"]["currentId"] == "m2"
    assert admin_settings(stack) == settings_before
    with api(stack) as ui:
        assert ui.get("/api/config").json()["name"].startswith(WEBUI_NAME)  # [webui_env] still in effect
        users = ui.get("/api/v1/users/").json()
    users = users.get("users", users) if isinstance(users, dict) else users
    assert {u["email"] for u in users} == {secrets(stack)["DEPLOYKIT_ADMIN_EMAIL"], STUDENT["email"]}
    answer = deploykit("chat", "--dir", str(stack.dir), "Say hello", "--max-tokens", "8", env=stack.env)
    assert answer.code == 0 and answer.out.strip(), answer.err


def test_upgrade_back_to_the_older_image_is_refused_naming_the_kept_backup(old_stack: dict[str, Any]) -> None:
    stack: Stack = old_stack["stack"]
    ids = container_ids(stack)
    plan = (stack.dir / "plan.json").read_bytes()
    before = backups(stack)
    result = upgrade(stack, old_stack["images"], old_stack["old"])
    print(result.err)  # what the user sees, for docs/reliability.md
    assert result.code == 2, result.err
    assert f"which {old_stack['old']} does not know" in result.err
    assert "migrations only go forward" in result.err and "Nothing was changed" in result.err
    assert f"--restore {old_stack['kept']}" in result.err  # the way back, with the backup to take
    assert "Traceback" not in result.err
    assert container_ids(stack) == ids and (stack.dir / "plan.json").read_bytes() == plan
    assert backups(stack) == before
    assert running_image(stack) == old_stack["new"]


def test_upgrade_with_the_kept_backup_brings_the_old_data_back_on_the_old_image(old_stack: dict[str, Any]) -> None:
    stack: Stack = old_stack["stack"]
    with api(stack, STUDENT) as ui:
        later = ui.post("/api/v1/chats/new", json={"chat": {"title": "made on the new release", "models": [MODEL_ID],
                                                            "messages": []}})  # fmt: skip
    assert later.status_code == 200, later.text
    later_id = later.json()["id"]
    before = backups(stack)
    result = upgrade(stack, old_stack["images"], old_stack["old"], "--restore", str(old_stack["kept"]), "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["restored"] == str(old_stack["kept"]) and report["up"]["healthy"] is True
    newer_backup = Path(report["backup"])  # the new release's data, kept before it was replaced
    assert backups(stack) - before == {newer_backup}
    old_stack["newer_backup"] = newer_backup

    assert running_image(stack) == old_stack["old"]
    logs = docker("logs", f"{stack.project}-open-webui-1")
    assert "Can't locate revision" not in logs
    restarts = docker("inspect", "-f", "{{.RestartCount}}", f"{stack.project}-open-webui-1").strip()
    assert restarts == "0"  # started once, on data it can read: no restart loop
    chat = student_chat(stack, old_stack["chat"])
    assert chat is not None and messages_of(chat) == {k: (m["role"], m["content"]) for k, m in MESSAGES.items()}
    assert student_chat(stack, later_id) is None  # made after the kept backup: not in the old data
    assert admin_settings(stack) == ADMIN_CHANGES


def test_restore_of_the_newer_backup_onto_the_older_image_is_refused(old_stack: dict[str, Any]) -> None:
    stack: Stack = old_stack["stack"]
    ids = container_ids(stack)
    newer: Path = old_stack["newer_backup"]
    result = deploykit("restore", "--dir", str(stack.dir), str(newer), env=stack.env)
    print(result.err)
    assert result.code == 2, result.err
    assert f"backup {newer.name} is at Open WebUI database revision" in result.err
    assert f"--image open-webui={old_stack['new']} --restore {newer}" in result.err
    assert container_ids(stack) == ids  # Open WebUI was not even stopped
    assert student_chat(stack, old_stack["chat"]) is not None
    leftovers = docker("ps", "-a", "-q", "--filter", f"label=org.deploykit.stack={stack.project}",
                       "--filter", "label=org.deploykit.helper")  # fmt: skip
    assert leftovers.strip() == ""
