"""One exception tree for everything a user can get wrong or the world can refuse.

Each class carries a message (what went wrong), a hint (what to do) and an exit code.
The CLI has a single handler that prints the two lines and exits with the code;
tracebacks appear only under ``--debug``.
"""

from __future__ import annotations


class DeployKitError(Exception):
    """Base class: a failure a person can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DeployKitError):
    """Bad input on the command line or in a file the user gave."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named thing (profile, model, service, stack) does not exist."""

    exit_code = 3


class ConfigError(UsageError):
    """Settings or data files that do not validate."""

    exit_code = 4


class PlanError(DeployKitError):
    """No backend, quantisation or context fits the hardware."""

    exit_code = 5


class EngineError(DeployKitError):
    """The Docker Engine or compose CLI is missing, unreachable or refused."""

    exit_code = 6


class PreflightError(DeployKitError):
    """Something on the host would make the stack fail; nothing was started."""

    exit_code = 7


class HealthError(DeployKitError):
    """The stack started but a health stage failed or timed out."""

    exit_code = 8

    def __init__(self, message: str, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.log_tail = log_tail


class DownloadError(DeployKitError):
    """A model could not be fetched."""

    exit_code = 9
