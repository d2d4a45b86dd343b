"""Defaults that `--help` shows and the settings use: stdlib only, so the CLI names them without pydantic."""

from __future__ import annotations

# The context a plan is capped at unless the settings say otherwise (--context, max_context).
DEFAULT_MAX_CONTEXT = 4096
