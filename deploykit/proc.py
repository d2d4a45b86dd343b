"""The one seam through which deploykit starts processes.

Tests that cannot have the real program (``nvidia-smi`` on a machine without a GPU) hand a fake
``Runner`` to the function under test; everything else runs the real thing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completed:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner(Protocol):
    def __call__(
        self,
        args: Sequence[str],
        *,
        timeout: float | None = ...,
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
    ) -> Completed: ...


def run_cmd(
    args: Sequence[str],
    *,
    timeout: float | None = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run ``args`` and capture its output; a missing program is returncode 127, a timeout 124."""
    if shutil.which(args[0]) is None:
        return Completed(tuple(args), 127, "", f"{args[0]}: command not found")
    # Its own session: a Ctrl-C at the terminal reaches deploykit only, which lets a step that changes
    # the engine (`docker compose up`) finish instead of leaving a container half made; a second Ctrl-C
    # stops it at once.
    proc = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return Completed(tuple(args), 124, out or "", f"{args[0]}: timed out after {timeout} s")
    except KeyboardInterrupt:
        try:
            proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    return Completed(tuple(args), proc.returncode, out, err)


def run_attached(args: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``args`` with the terminal attached (for `logs -f`); returns the exit code."""
    if shutil.which(args[0]) is None:
        return 127
    try:
        return subprocess.call(list(args), env=dict(env) if env is not None else None)
    except KeyboardInterrupt:
        return 130
