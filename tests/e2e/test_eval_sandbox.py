"""The code sandbox of `deploykit eval` on the real engine, proven both ways on the real data: HumanEval's 164
canonical solutions pass and the same programs with `return None` bodies fail; hostile completions are
contained (no network, no host file read or written, no process or file left for the next check) and scored
failed with their reason. Checks run in the stack's own Open WebUI image, as `eval` runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deploykit.quality.humaneval import CodeProblem, check_program, humaneval_problems
from deploykit.running.sandbox import CheckOutcome, CodeCheck, check_programs, sandbox_image
from deploykit.running.stack import load_stack
from deploykit.seams.engine import EngineAddress
from deploykit.seams.sandbox import SandboxLimits, run_sandboxed
from deploykit.values.errors import EngineError
from tests.e2e.conftest import GGUF, MODEL_CACHE, MODEL_ID, deploykit, docker, remove_by_label

pytestmark = pytest.mark.e2e
PROJECT = "deploykit-e2e-evs-stack"
LABEL = f"org.deploykit.stack={PROJECT}"


@pytest.fixture(scope="module")
def stack_dir(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real stack folder, rendered by the CLI: its .env holds the stack's generated secrets."""
    folder = tmp_path_factory.mktemp("evs") / "e2e-evs-stack"
    rendered = deploykit(
        "render", "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--dir", str(folder),
        "--image", f"inference={engine['LLAMACPP_IMAGE']}", "--image", f"open-webui={engine['OPENWEBUI_IMAGE']}",
        env={"DEPLOYKIT_MODEL_CACHE": str(MODEL_CACHE)},
    )  # fmt: skip
    assert rendered.code == 0, rendered.err
    assert load_stack(folder).spec.project == PROJECT
    return folder


@pytest.fixture(autouse=True)
def _nothing_left() -> object:
    remove_by_label(LABEL)
    yield
    left = docker("ps", "-aq", "--filter", f"label={LABEL}").split()
    remove_by_label(LABEL)
    assert left == [], "a sandbox container was left behind"


def check(stack_dir: Path, checks: list[CodeCheck]) -> dict[str, CheckOutcome]:
    stack = load_stack(stack_dir)
    outcomes = check_programs(EngineAddress(), sandbox_image(stack), checks, project=stack.spec.project)
    assert [o.key for o in outcomes] == [c.key for c in checks]
    return {o.key: o for o in outcomes}


def by_id(task_id: str) -> CodeProblem:
    return next(p for p in humaneval_problems() if p.task_id == task_id)


def test_the_canonical_solutions_pass_and_empty_bodies_fail(stack_dir: Path) -> None:
    problems = humaneval_problems()
    assert len(problems) == 164
    right = [CodeCheck(p.task_id, check_program(p, p.canonical_solution)) for p in problems]
    wrong = [CodeCheck(f"{p.task_id} none", check_program(p, "    return None\n")) for p in problems]
    seen: list[tuple[int, int]] = []
    kept: list[CheckOutcome] = []
    stack = load_stack(stack_dir)
    outcomes = check_programs(
        EngineAddress(), sandbox_image(stack), right + wrong, project=PROJECT,
        progress=lambda d, t: seen.append((d, t)), on_outcome=kept.append,
    )  # fmt: skip
    assert [o.key for o in outcomes] == [c.key for c in right + wrong]
    failed_right = [o for o in outcomes[:164] if not (o.passed and o.reason == "passed")]
    assert failed_right == []
    passed_wrong = [o for o in outcomes[164:] if o.passed or not o.reason.startswith("failed: ")]
    assert passed_wrong == []
    # Each outcome handed over once, as it came, and counted.
    assert sorted(kept, key=lambda o: o.key) == sorted(outcomes, key=lambda o: o.key)
    assert seen == [(done, 328) for done in range(1, 329)]


SECRET_HUNT = """
import os
found = []
def look(path):
    try:
        with open(path, errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        return type(exc).__name__
    for needle in NEEDLES:
        if needle in text:
            found.append(needle)
    return "read"
tried = [look(p) for p in PATHS]
for root in ("/app", "/home", "/root", "/tmp", "/srv", "/mnt", "/work"):
    for folder, _, files in os.walk(root):
        for name in files:
            if name == ".env":
                look(os.path.join(folder, name))
for value in os.environ.values():
    found += [n for n in NEEDLES if n in value]
assert False, "found " + " ".join(found) + " | " + " ".join(tried)
"""


def test_a_completion_cannot_read_the_stacks_secrets_or_write_on_the_host(stack_dir: Path, tmp_path: Path) -> None:
    env_file = stack_dir / ".env"
    secrets = [line.split("=", 1)[1].strip("'") for line in env_file.read_text().splitlines() if "=" in line]
    secrets = [s for s in secrets if len(s) >= 16]
    assert secrets, "the rendered .env holds no secret to hunt for"
    before = {p.name: p.stat().st_mtime_ns for p in stack_dir.iterdir()}
    host_targets = [stack_dir / "pwned", tmp_path / "pwned", Path.home() / "deploykit-e2e-evs-pwned"]
    hunt = f"NEEDLES = {secrets!r}\nPATHS = {[str(env_file), '/proc/1/environ']!r}\n" + SECRET_HUNT
    # The same hunt, given a copy of the secret inside its own folder, finds it: the reason is the channel
    # the test reads, so an empty "found" means the secret was out of reach, not that the hunt is blind.
    control = f"open('copy.env', 'w').write({secrets[0]!r})\n" + hunt.replace("PATHS = [", "PATHS = ['copy.env', ")
    writes = "\n".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError as exc:\n    print(exc)" for t in host_targets
    )
    outcomes = check(
        stack_dir,
        [
            CodeCheck("hunt", hunt, timeout_s=60),  # it walks the image's folders: time for a busy machine
            CodeCheck("control", control, timeout_s=60),
            CodeCheck("write-host", writes + "\nimport os\nassert not any(os.path.exists(p) for p in "
                      f"{[str(t) for t in host_targets]!r})\nopen('/etc/deploykit-pwned', 'w')"),
        ],
    )  # fmt: skip
    assert outcomes["control"].reason.startswith(f"failed: AssertionError: found {secrets[0]}"), outcomes
    hunt_reason = outcomes["hunt"].reason
    assert hunt_reason == "failed: AssertionError: found  | FileNotFoundError PermissionError", hunt_reason
    assert not any(s in o.reason for o in outcomes.values() if o.key != "control" for s in secrets)
    write_reason = outcomes["write-host"].reason
    assert write_reason == "failed: OSError: [Errno 30] Read-only file system: '/etc/deploykit-pwned'", write_reason
    assert not any(t.exists() for t in host_targets)
    assert {p.name: p.stat().st_mtime_ns for p in stack_dir.iterdir()} == before


def test_hostile_completions_fail_with_their_reason_and_spoil_no_other_check(stack_dir: Path) -> None:
    first = by_id("HumanEval/0")
    good = check_program(first, first.canonical_solution)
    hostile = {
        "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)",
        "loopback-engine": "import socket\nsocket.create_connection(('172.17.0.1', 2375), timeout=3)",
        "fork-bomb": "import os\nwhile True:\n    os.fork()",
        "endless-loop": "while True:\n    pass",
        "sleeper": "import time\ntime.sleep(3600)",
        "huge-output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
        "huge-file": "with open('big', 'wb') as f:\n    f.write(b'x' * (64 << 20))",
        "memory": "x = bytearray(4 << 30)",
        "outside-folder": "open('/app/backend/data/pwned', 'w')",
        # Left behind for the next checks: a file in the shared scratch folder and a process that outlives it.
        "leave-file": "open('/tmp/left-behind', 'w').write('x')",
        "leave-process": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(2)\n"
        "    open('/tmp/late', 'w').write('x')\n    os._exit(0)\nos._exit(0)",
        "exit-early": "import os\nos._exit(0)",
    }
    checks = []
    for name, program in hostile.items():
        checks.append(CodeCheck(name, program, timeout_s=3))
        checks.append(CodeCheck(f"after {name}", good, timeout_s=10))
    later = "import os, time\ntime.sleep(3)\nassert sorted(os.listdir('/tmp')) == [os.path.basename(os.getcwd())], "
    later += "os.listdir('/tmp')\nassert len([p for p in os.listdir('/proc') if p.isdigit()]) == 2, 'other processes'"
    checks.append(CodeCheck("nothing left", later, timeout_s=10))
    outcomes = check(stack_dir, checks)
    reasons = {k: o.reason for k, o in outcomes.items() if not o.passed}
    assert all(outcomes[f"after {name}"].passed for name in hostile), reasons
    assert outcomes["nothing left"].passed, reasons
    expected = {
        "network": "failed: OSError: [Errno 101] Network is unreachable",
        "loopback-engine": "failed: OSError: [Errno 101] Network is unreachable",
        "endless-loop": "timed out after 3 s",
        "sleeper": "timed out after 3 s",
        "huge-output": "output over 64 KiB",
        "huge-file": "failed: OSError: [Errno 27] File too large",
        "memory": "failed: MemoryError",
        "outside-folder": "failed: OSError: [Errno 30] Read-only file system: '/app/backend/data/pwned'",
        "exit-early": "crashed: exited with code 0 before its tests finished",
    }
    assert {k: reasons.get(k) for k in expected} == expected
    assert reasons["fork-bomb"] in ("timed out after 3 s", "failed: BlockingIOError: [Errno 11] Resource "
                                    "temporarily unavailable"), reasons  # fmt: skip


def test_the_sandbox_is_what_it_says(stack_dir: Path) -> None:
    """What a check sees of its container: no root, no capability, no new privileges, a read-only root, no
    network device but loopback, and the memory and process limits."""
    probe = """
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
def cgroup(*names):  # cgroup v2's file, else v1's
    for name in names:
        try:
            return open("/sys/fs/cgroup/" + name).read().strip()
        except OSError:
            pass
    return "unreadable"
facts = {
    "uid": os.getuid(), "cap": status["CapEff"].strip(), "nnp": status["NoNewPrivs"].strip(),
    "ro": os.statvfs("/").f_flag & 1, "net": sorted(os.listdir("/sys/class/net")),
    "mem": cgroup("memory.max", "memory/memory.limit_in_bytes"),
    "pids": cgroup("pids.max", "pids/pids.max"),
}
raise SystemExit(json.dumps(facts, separators=(",", ":")))
"""
    outcome = check(stack_dir, [CodeCheck("probe", probe)])["probe"]
    assert outcome.reason.startswith("failed: SystemExit: "), outcome
    facts = json.loads(outcome.reason.removeprefix("failed: SystemExit: "))
    assert facts["uid"] >= 200_000 and facts["uid"] != os.getuid()
    assert facts["cap"] == "0000000000000000" and facts["nnp"] == "1" and facts["ro"] == 1
    assert facts["net"] == ["lo"]
    assert facts["mem"] == str(1024 << 20) and facts["pids"] == "128"


def test_an_image_the_engine_lacks_is_refused_not_pulled(stack_dir: Path) -> None:
    missing = "deploykit-local/no-such-sandbox:0"
    with pytest.raises(EngineError, match="is not on the engine") as refused:
        check_programs(EngineAddress(), missing, [CodeCheck("a", "pass")], project=PROJECT)
    assert "run `deploykit up`" in (refused.value.hint or "")
    assert docker("images", "-q", missing).strip() == ""


def test_a_container_is_killed_at_its_wall_clock_bound_and_removed(engine: dict[str, str]) -> None:
    lines: list[str] = []
    program = "import time\nprint('started', flush=True)\ntime.sleep(600)"
    run = run_sandboxed(
        EngineAddress(), engine["OPENWEBUI_IMAGE"], ["python3", "-c", program], labels={"org.deploykit.stack": PROJECT},
        limits=SandboxLimits(wall_s=3), on_line=lines.append,
    )  # fmt: skip
    assert run.exit_code is None and run.output == "started\n" and lines == ["started"]
