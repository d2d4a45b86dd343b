"""The stack's two services, named as the templates name them (compose services, log and restart targets)."""

INFERENCE = "inference"
WEBUI = "open-webui"
SERVICES = (INFERENCE, WEBUI)
# The HTTPS proxy in front of Open WebUI, in stacks rendered with --tls only.
TLS_PROXY = "tls-proxy"
