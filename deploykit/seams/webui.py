"""Open WebUI's own API: headless admin bootstrap and the PersistentConfig drift check.

Open WebUI reads "PersistentConfig" variables (the OpenAI connection among them) from the
environment on first boot only; afterwards its database wins, so an edited compose file can be
silently ignored. ``connection_drift`` compares what Open WebUI really uses with the stack's
settings, so `up` and `status` can say so instead of leaving users to wonder.
"""

from __future__ import annotations

from typing import Any

import httpx

from deploykit.seams.health import NotReady, StageFailed


def admin_token(client: httpx.Client, email: str, password: str) -> tuple[str, bool]:
    """Sign in as the stack's admin, creating it on a fresh database. Returns (token, created)."""
    try:
        config = client.get("/api/config").json()
        onboarding = bool(config.get("onboarding"))
        if onboarding:
            r = client.post(
                "/api/v1/auths/signup", json={"name": "deploykit admin", "email": email, "password": password}
            )
        else:
            r = client.post("/api/v1/auths/signin", json={"email": email, "password": password})
    except (httpx.HTTPError, ValueError) as exc:
        raise NotReady(f"Open WebUI auth: {type(exc).__name__}") from None
    if r.status_code in (400, 401, 403):
        raise StageFailed(
            f"Open WebUI refused the stack's admin credentials ({r.status_code}: {r.text[:120]}); the data volume "
            "holds accounts from another stack or the password was changed in the UI"
        )
    if r.status_code != 200:
        raise NotReady(f"Open WebUI auth: HTTP {r.status_code}")
    return str(r.json()["token"]), onboarding


def _read(client: httpx.Client, path: str) -> dict[str, Any] | Exception:
    """A JSON object from Open WebUI's API, or the error that stopped it."""
    try:
        r = client.get(path)
        r.raise_for_status()
        data = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return exc
    return data if isinstance(data, dict) else ValueError(f"{path} gave no JSON object")


def connection_drift(client: httpx.Client, expected_url: str, expected_key: str) -> list[str]:
    """Differences between the OpenAI connection Open WebUI uses and the one the stack sets."""
    config = _read(client, "/openai/config")
    if isinstance(config, Exception):
        return [f"could not read Open WebUI's connection settings ({type(config).__name__})"]
    drift = []
    if config.get("ENABLE_OPENAI_API") is False:
        drift.append("the OpenAI API connection is switched off in Open WebUI")
    urls = list(config.get("OPENAI_API_BASE_URLS") or [])
    if expected_url not in urls:
        drift.append(f"Open WebUI uses the API URLs {urls}, not {expected_url}")
    else:
        keys = list(config.get("OPENAI_API_KEYS") or [])
        index = urls.index(expected_url)
        if index >= len(keys) or keys[index] != expected_key:
            drift.append(f"Open WebUI holds another API key for {expected_url}")
    return drift


def apply_stored(client: httpx.Client, wanted: dict[str, str]) -> list[str]:
    """Write the stack's [webui_env] values that Open WebUI keeps in its database through the admin API.

    Open WebUI reads those from the environment on the first start only; afterwards its database wins. So on
    every `up` each differing value is written (``/api/v1/configs/import`` upserts just the keys given), typed
    like the value Open WebUI holds. Returns notes: what changed, and what could not be applied.
    """
    from deploykit.values.webui_env import typed

    if not wanted:
        return []
    current = _read(client, "/api/v1/configs/export")
    if isinstance(current, Exception):
        return [f"could not read Open WebUI's stored settings ({type(current).__name__}); [webui_env] not applied"]
    updates: dict[str, object] = {}
    notes = []
    for key, text in wanted.items():
        try:
            value = typed(text, current.get(key))
        except ValueError as exc:
            notes.append(f"[webui_env] value for {key} does not fit Open WebUI's type for it ({exc}); not applied")
            continue
        if current.get(key) != value:
            updates[key] = value
    if updates:
        try:
            r = client.post("/api/v1/configs/import", json={"config": updates})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            return [*notes, f"Open WebUI refused the stored settings ({exc}); [webui_env] not applied"]
        notes.append(f"applied {len(updates)} stored Open WebUI setting(s): {', '.join(sorted(updates))}")
    return notes


def connections_differ(config: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between Open WebUI's stored OpenAI connections (``GET /openai/config``) and the stack's.

    ``wanted`` holds the four keys `POST /openai/config/update` takes. A stored per-connection config may carry
    more than the stack sets (the admin's own tags): only the stack's keys are compared."""
    differ = []
    if config.get("ENABLE_OPENAI_API") is not wanted["ENABLE_OPENAI_API"]:
        differ.append("the OpenAI API switch")
    urls = list(config.get("OPENAI_API_BASE_URLS") or [])
    if urls != wanted["OPENAI_API_BASE_URLS"]:
        differ.append(f"the API URLs ({urls})")
    keys = list(config.get("OPENAI_API_KEYS") or [])
    if keys != wanted["OPENAI_API_KEYS"]:
        differ.append("the API keys")
    stored = config.get("OPENAI_API_CONFIGS") or {}
    for index, settings in wanted["OPENAI_API_CONFIGS"].items():
        held = stored.get(index) or {}
        if any(held.get(k) != v for k, v in settings.items()):
            differ.append(f"connection {index}'s settings")
    return differ


def sync_connections(
    client: httpx.Client,
    urls: list[str],
    keys: list[str],
    configs: dict[str, dict[str, Any]],
    default_models: str,
) -> list[str]:
    """Make Open WebUI's stored OpenAI connections and default models the stack's, on every `up`.

    Open WebUI keeps them in its database after the first start (the environment is read once), so after a
    model was added or removed, or the stack's servers changed, the stored list would still be the old one.
    When they differ, all four connection keys are written together (the per-connection settings are keyed by
    position) and the default models through the config import. Returns notes: what was changed, and what
    could not be."""
    wanted: dict[str, Any] = {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": urls,
        "OPENAI_API_KEYS": keys,
        "OPENAI_API_CONFIGS": configs,
    }
    notes = []
    config = _read(client, "/openai/config")
    if isinstance(config, Exception):
        return [f"could not read Open WebUI's connections ({type(config).__name__}); they were not checked"]
    differ = connections_differ(config, wanted)
    if differ:
        # Keep what an admin added to a connection the stack also sets (tags, a prefix): ours win per key.
        stored = config.get("OPENAI_API_CONFIGS") or {}
        held_urls = list(config.get("OPENAI_API_BASE_URLS") or [])
        merged = {}
        for index, url in enumerate(urls):
            before = stored.get(str(held_urls.index(url))) if url in held_urls else None
            merged[str(index)] = {**(before or {}), **configs.get(str(index), {})}
        try:
            r = client.post("/openai/config/update", json={**wanted, "OPENAI_API_CONFIGS": merged})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            return [f"Open WebUI refused the stack's connections ({exc}); it may list other models"]
        notes.append(f"wrote Open WebUI's {len(urls)} OpenAI connection(s): {', '.join(differ)} differed")
    current = _read(client, "/api/v1/configs/export")
    if isinstance(current, Exception):
        return [*notes, f"could not read Open WebUI's default models ({type(current).__name__})"]
    if current.get("ui.default_models") != default_models:  # the export is flat: dotted keys
        try:
            r = client.post("/api/v1/configs/import", json={"config": {"ui.default_models": default_models}})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            return [*notes, f"Open WebUI refused the default models ({exc})"]
        notes.append(f"set Open WebUI's default model(s) to {default_models}")
    return notes
