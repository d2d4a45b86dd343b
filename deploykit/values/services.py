"""The stack's two services, named as the templates name them (compose services, log and restart targets)."""

INFERENCE = "inference"
WEBUI = "open-webui"
SERVICES = (INFERENCE, WEBUI)
