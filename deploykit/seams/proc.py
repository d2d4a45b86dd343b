"""The one seam through which deploykit starts processes.

Tests that cannot have the real program (``nvidia-smi`` on a machine without a GPU) hand a fake
``Runner`` to the function under test; everything else runs the real thing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


@contextmanager
def ssh_forward(target: str, port: int | None, remote_port: int, timeout: float = 15) -> Iterator[int]:
    """``ssh -N -L`` from a free loopback port here to ``remote_port`` on the target's loopback, for as long as
    the block runs; yields the local port. The system ssh client, so ~/.ssh/config and known_hosts apply."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = int(probe.getsockname()[1])
    args = ["ssh", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    args += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}", *(["-p", str(port)] if port else []), "--", target]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", local)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = (
                    proc.stderr.read().decode(errors="replace").strip()
                    if proc.stderr and proc.poll() is not None
                    else ""
                )
                raise OSError(f"ssh -L to {target} for port {remote_port} did not open: {err or 'timed out'}")
            time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
