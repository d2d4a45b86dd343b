"""The program that runs INSIDE a sandbox container (``python3 -I -c <this file> CONFIG CHECK...``): it checks
each program in its own process, one at a time, and prints one JSON line per check on stdout.

It imports nothing of deploykit, only the standard library (it runs in the image's own python3), and is never
run on this machine with a completion. Its arguments: CONFIG is ``{"output_kib", "memory_mb", "fsize_kib",
"nproc", "sandboxed"}``, each CHECK ``{"key", "program", "timeout_s"}``. It prints ``{"key", "passed",
"reason"}`` per check, then ``{"done": N}``.

Why one at a time, and why it must be PID 1: a check runs as the same user as the runner, so only the runner
being the namespace's init (which ignores every signal it has no handler for, SIGKILL too, when sent from
inside) and not dumpable (no ptrace, no /proc/1/fd) keeps a check from killing it or writing its report; and
only nothing else running keeps a check from touching another's process. After each check every other
process in the container is killed and /tmp emptied, so nothing it started or wrote reaches the next.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRATCH = tempfile.gettempdir()  # /tmp in the sandbox: its only writable folder (a tmpfs)
REASON_CHARS = 200
# Runs the check's program in a fresh interpreter and says on fd MARKER_FD whether it ran to its end: an exit
# code alone would score a program that calls os._exit(0) before its tests as passed.
WRAPPER = """
import os, sys
fd = int(sys.argv[1])
path = sys.argv[2]
sys.argv = [path]
me = os.getpid()
def say(text):  # the check's own process only: a process it forked runs this code too
    if os.getpid() == me:
        os.write(fd, text.encode("utf-8", "replace")[:4096])
try:
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path})
except BaseException as exc:
    detail = str(exc).strip().splitlines()
    say("error " + type(exc).__name__ + (": " + detail[0] if detail else ""))
    os._exit(1)
say("ok")
sys.stdout.flush()
os._exit(0)
"""


def _limits(config: dict[str, Any], timeout_s: float) -> None:
    """In the check's process, before it runs: its own rlimits and session."""
    os.setsid()
    cpu = int(timeout_s) + 1
    memory = int(config["memory_mb"]) << 20
    for limit, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, int(config["fsize_kib"]) << 10),
        (resource.RLIMIT_NPROC, int(config["nproc"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 64),
    ):
        resource.setrlimit(limit, (value, value))


def _others() -> list[int]:
    mine = os.getpid()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != mine]


def _reap() -> None:
    """Collect every exited child (orphans of a check are the init's to collect)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_the_rest(proc: subprocess.Popen[bytes], contained: bool) -> None:
    """Every process the check started, gone. Inside the sandbox (PID 1): every other process in it."""
    for _ in range(500):
        try:
            if contained:
                os.kill(-1, signal.SIGKILL)  # all but the init itself
            else:  # a test of the runner on a workstation: only the check's own session
                os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        exited = proc.poll() is not None  # before _reap, which would take its exit status
        _reap()
        if exited and (not contained or not _others()):
            return
        time.sleep(0.01)


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        except OSError:
            pass  # not ours to remove (the image's own files): nothing a check wrote


def _watch(proc: subprocess.Popen[bytes], timeout_s: float, output_cap: int) -> str | None:
    """Read the check's output until it exits; a reason when it must be stopped first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = 0
    stream: int | None = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"timed out after {timeout_s:g} s"
        ready, _, _ = select.select([stream] if stream is not None else [], [], [], min(left, 0.05))
        if ready and stream is not None:
            chunk = os.read(stream, 65536)
            seen += len(chunk)
            if seen > output_cap:
                return f"output over {output_cap >> 10} KiB"
            if chunk:
                continue
            stream = None  # closed: wait for the exit alone
        if proc.poll() is not None:  # exited (its orphans may still hold the pipe: they are killed next)
            return None


def _verdict(proc: subprocess.Popen[bytes], marker: str) -> tuple[bool, str]:
    code = proc.returncode
    if marker == "ok" and code == 0:
        return True, "passed"
    if marker.startswith("error "):
        return False, "failed: " + marker[len("error ") :]
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGXCPU": " (its CPU time limit)", "SIGXFSZ": " (its file size limit)"}.get(name, "")
        return False, f"crashed: killed by {name}{why}"
    return False, f"crashed: exited with code {code} before its tests finished"


def run_check(config: dict[str, Any], check: dict[str, Any], contained: bool) -> dict[str, Any]:
    timeout_s = float(check["timeout_s"])
    folder = tempfile.mkdtemp(prefix="check-", dir=SCRATCH)
    program = str(Path(folder) / "program.py")
    Path(program).write_text(check["program"], encoding="utf-8")
    read_marker, write_marker = os.pipe()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", WRAPPER, str(write_marker), program],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=folder, env=env,
            pass_fds=(write_marker,), preexec_fn=lambda: _limits(config, timeout_s),
        )  # fmt: skip
    except OSError as exc:
        os.close(read_marker)
        os.close(write_marker)
        return {"key": check["key"], "passed": False, "reason": f"sandbox refused: {exc}"[:REASON_CHARS]}
    os.close(write_marker)
    try:
        stopped = _watch(proc, timeout_s, int(config["output_kib"]) << 10)
        _kill_the_rest(proc, contained)
        os.set_blocking(read_marker, False)
        try:
            marker = os.read(read_marker, 4096).decode("utf-8", "replace")
        except BlockingIOError:
            marker = ""
        passed, reason = (False, stopped) if stopped else _verdict(proc, marker)
    finally:
        os.close(read_marker)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)
        if contained:
            for scratch in (Path(SCRATCH), Path("/dev/shm")):
                if scratch.is_dir():
                    _empty(scratch)
    return {"key": check["key"], "passed": passed, "reason": reason[:REASON_CHARS]}


def _not_dumpable() -> None:
    """No ptrace of the runner and no /proc/1/fd for a check running as the same user."""
    import ctypes

    pr_set_dumpable = 4
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    contained = os.getpid() == 1
    if contained:
        _not_dumpable()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # an init ignores what it has no handler for
    # Told it is in the sandbox, it checks nothing unless it is that container's unprivileged init: anything
    # else (an engine that added its own init, a user override to root) would weaken what keeps checks apart.
    unsafe = bool(config.get("sandboxed")) and (not contained or os.getuid() == 0)
    for raw in argv[1:]:
        check = json.loads(raw)
        if unsafe:
            why = "sandbox refused: the runner is not the container's non-root PID 1"
            print(json.dumps({"key": check["key"], "passed": False, "reason": why}), flush=True)
        else:
            print(json.dumps(run_check(config, check, contained)), flush=True)
    print(json.dumps({"done": len(argv) - 1}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
