"""The stack's two services, named as the templates name them (compose services, log and restart targets)."""

INFERENCE = "inference"
WEBUI = "open-webui"
SERVICES = (INFERENCE, WEBUI)
# The HTTPS proxy in front of Open WebUI, in stacks rendered with --tls only.
TLS_PROXY = "tls-proxy"


def webui_url(host: str, port: int, https: bool = False) -> str:
    """Open WebUI's address on ``host``: the one way to write it (up's report, status, the fleet, reachable URLs);
    ``https``: the stack has the HTTPS proxy in front of it (--tls)."""
    return f"{'https' if https else 'http'}://{host}:{port}"
