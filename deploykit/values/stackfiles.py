"""The stack folder's names: its files per target, its secrets' keys, and how a value is written into .env.

Values only: ``deploykit.seams.stackdir`` reads and writes the folder; the renderer names its files from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from deploykit.values.errors import UsageError

PLAN_FILE = "plan.json"  # why every number is what it is, and what the stack was made from
ENV_FILE = ".env"  # the secrets
STACK_FILES = ("compose.yaml", ENV_FILE, PLAN_FILE)
# The file each target renders: compose.yaml (Docker Compose), swarm.yaml (`docker stack deploy`), kubernetes.yaml.
TARGET_FILES: dict[str, str] = {"compose": "compose.yaml", "swarm": "swarm.yaml", "kubernetes": "kubernetes.yaml"}
# HTTPS (--tls): the proxy's configuration, the certificate it serves (chain, leaf first), its key,
# and the site CA's certificate for people to trust (internal certificates only).
CADDYFILE = "Caddyfile"
TLS_CERT_FILE = "tls-cert.pem"
TLS_KEY_FILE = "tls-key.pem"
TLS_CA_FILE = "tls-ca.pem"
# Files that hold secret values in clear: written 0600 from the start.
PRIVATE_FILES = (".env", "kubernetes.yaml", TLS_KEY_FILE)
SITE_FILES = ("compose.override.yaml", "deploykit.toml")  # the site's own; never written by render
# DEPLOYKIT_STACK_ID is no secret, but it lives here: it tells this stack's containers and volume from
# another stack's that happens to share the project name.
INFERENCE_API_KEY = "INFERENCE_API_KEY"  # the inference server's API key, given to Open WebUI
WEBUI_SECRET_KEY = "WEBUI_SECRET_KEY"  # Open WebUI's session secret
ADMIN_EMAIL = "DEPLOYKIT_ADMIN_EMAIL"  # the admin deploykit creates and signs in as for its checks
ADMIN_PASSWORD = "DEPLOYKIT_ADMIN_PASSWORD"
STACK_ID = "DEPLOYKIT_STACK_ID"
SECRET_KEYS = (INFERENCE_API_KEY, WEBUI_SECRET_KEY, ADMIN_EMAIL, ADMIN_PASSWORD, STACK_ID)
# The secrets a running stack needs (the admin's are only for deploykit's own checks). Swarm mounts
# them as files under /run/secrets, named in lower case; Kubernetes keeps them in one Secret.
RUNTIME_SECRETS = (INFERENCE_API_KEY, WEBUI_SECRET_KEY)


def control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, ESC, DEL, C1 …) other than a tab."""
    return any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in text)


def env_quote(value: object) -> str:
    """A compose .env value: single-quoted, so compose takes it literally."""
    text = str(value)
    if "'" in text or "\n" in text or "\r" in text:
        # Never the value itself in the message: it is a secret.
        raise UsageError("a value for .env holds quotes or newlines, which .env cannot hold.")
    if control_characters(text):
        raise UsageError("a value for .env holds a control character (NUL, escape …), which .env cannot hold.")
    return f"'{text}'"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode_files(files: Mapping[str, str]) -> dict[str, bytes]:
    out = {}
    for name, text in files.items():
        try:
            out[name] = text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{name} would hold a name or path that is not UTF-8 text (a file name with raw bytes?).",
                "Rename the model file or folder to plain UTF-8 and try again.",
            ) from None
    return out
