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


class StackDirError(UsageError):
    """The stack folder holds something deploykit will not overwrite or cannot read: not a stack,
    a hand-edited compose.yaml, an unreadable secret."""

    exit_code = 10


class DiskFullError(DeployKitError):
    """A disk deploykit writes to (the stack folder, a backup folder, a data volume) has no room left;
    what was being written was taken away again and the old files are as they were."""

    exit_code = 11


class InternalError(DeployKitError):
    """A bug: an exception nobody planned for. The traceback goes to a file, not the terminal."""

    exit_code = 70


# Exit codes a user can meet, for the README table and the docs (keep in step with the classes above).
EXIT_CODES = {
    0: "success",
    1: "not healthy (`status`), a failed check (`doctor`, `smoke`)",
    UsageError.exit_code: "bad input: a flag, argument or file given",
    NotFoundError.exit_code: "not found: profile, model, file or stack",
    ConfigError.exit_code: "invalid settings or data file",
    PlanError.exit_code: "nothing fits the hardware",
    EngineError.exit_code: "Docker Engine or compose unreachable or refused",
    PreflightError.exit_code: "preflight failed; nothing started",
    HealthError.exit_code: "a health stage failed",
    DownloadError.exit_code: "model download failed",
    StackDirError.exit_code: "stack folder refused: not a stack, edited by hand, unreadable secret",
    DiskFullError.exit_code: "a disk is full; nothing was changed",
    InternalError.exit_code: "internal error (a bug); the traceback is written to a file",
    130: "interrupted (Ctrl-C)",
}


def write_crash_report(text: str) -> str:
    """Keep a traceback in ``$XDG_CACHE_HOME/deploykit/crash/`` (mode 0600); return where, or why not."""
    import os
    import time

    from deploykit.values.paths import cache_dir

    folder = cache_dir() / "crash"
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
    except OSError as exc:
        return f"nowhere ({folder}: {exc.strerror})"
    return str(path)
