"""The stack's two services, named as the templates name them (compose services, log and restart targets)."""

INFERENCE = "inference"
WEBUI = "open-webui"
SERVICES = (INFERENCE, WEBUI)


def webui_url(host: str, port: int) -> str:
    """Open WebUI's address on ``host``: the one way to write it (up's report, status, the fleet, reachable URLs)."""
    return f"http://{host}:{port}"
