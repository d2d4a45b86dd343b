"""The sandbox's runner protocol, without an engine: the runner (deploykit/running/sandbox_runner.py) run here on
programs these tests wrote (never a model's completion: those run only in the sandbox container), the report
read back, and the batches. The container's own locks are proven in tests/e2e/test_eval_sandbox.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deploykit.running import sandbox
from deploykit.running.sandbox import CheckOutcome, CodeCheck, check_programs, outcomes_of
from deploykit.seams.engine import EngineAddress
from deploykit.seams.sandbox import SandboxRun, _follow

RUNNER = Path(sandbox.__file__).with_name("sandbox_runner.py")


def run_runner(checks: list[CodeCheck], tmp_path: Path, **limits: int) -> list[dict[str, object]]:
    config: dict[str, object] = {**sandbox.CHECK_LIMITS, **limits}
    args = [json.dumps(config), *(sandbox._argument(c) for c in checks)]
    done = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER.read_text(), *args],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path,
    )  # fmt: skip
    rows: list[dict[str, object]] = [json.loads(line) for line in done.stdout.splitlines()]
    return rows


def test_the_runner_reports_one_line_per_check_then_done(tmp_path: Path) -> None:
    checks = [
        CodeCheck("pass", "def f():\n    return 1\nassert f() == 1\n"),
        CodeCheck("assert", "assert 1 == 2, 'one is not two'"),
        CodeCheck("error", "{}['missing']"),
        CodeCheck("syntax", "def f(:\n"),
        CodeCheck("exit-0-early", "import os\nos._exit(0)\nassert False"),
        CodeCheck("sys-exit", "import sys\nsys.exit(0)"),
        CodeCheck("loop", "while True:\n    pass", timeout_s=1),
        CodeCheck("output", "print('x' * (1 << 20))"),
        CodeCheck("signal", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),
    ]
    rows = run_runner(checks, tmp_path, output_kib=16)
    assert rows[-1] == {"done": len(checks)}
    assert {r["key"]: (r["passed"], r["reason"]) for r in rows[:-1]} == {
        "pass": (True, "passed"),
        "assert": (False, "failed: AssertionError: one is not two"),
        "error": (False, "failed: KeyError: 'missing'"),
        "syntax": (False, "failed: SyntaxError: invalid syntax (program.py, line 1)"),
        "exit-0-early": (False, "crashed: exited with code 0 before its tests finished"),
        "sys-exit": (False, "failed: SystemExit: 0"),
        "loop": (False, "timed out after 1 s"),
        "output": (False, "output over 16 KiB"),
        "signal": (False, "crashed: killed by SIGSEGV"),
    }
    assert [r["key"] for r in rows[:-1]] == [c.key for c in checks]


def test_each_check_gets_its_own_folder_and_rlimits(tmp_path: Path) -> None:
    probe = (
        "import os, resource\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
        "open('mine', 'w').write('x')\n"
        "assert resource.getrlimit(resource.RLIMIT_AS)[0] == 256 << 20\n"
        "assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == 8 << 10\n"
        "assert resource.getrlimit(resource.RLIMIT_CPU)[0] == 3\n"
    )
    big_file = "open('big', 'wb').write(b'x' * (64 << 10))"
    rows = run_runner(
        [CodeCheck("a", probe, timeout_s=2), CodeCheck("b", probe, timeout_s=2.5), CodeCheck("big", big_file)],
        tmp_path, memory_mb=256, fsize_kib=8,
    )  # fmt: skip
    assert [(r["key"], r["reason"]) for r in rows[:-1]] == [
        ("a", "passed"),
        ("b", "passed"),
        ("big", "failed: OSError: [Errno 27] File too large"),
    ]


def check(key: str) -> CodeCheck:
    return CodeCheck(key, "pass")


def test_the_report_is_read_back_in_the_batchs_order_and_gaps_are_failures() -> None:
    batch = [check("a"), check("b"), check("c")]
    output = "\n".join(
        [
            json.dumps({"key": "b", "passed": True, "reason": "passed"}),
            "not json",
            json.dumps({"key": "zz", "passed": True, "reason": "passed"}),  # not of this batch
            json.dumps({"key": "a", "passed": "yes", "reason": "passed"}),  # not a report
            json.dumps({"key": "b", "passed": False, "reason": "later"}),  # the first report counts
        ]
    )
    killed = outcomes_of(SandboxRun(exit_code=None, output=output, errors=""), batch, 40)
    gone = "timed out: the sandbox's bound of 40 s for its batch was reached first"
    assert killed == [CheckOutcome("a", False, gone), CheckOutcome("b", True, "passed"), CheckOutcome("c", False, gone)]
    broken = outcomes_of(SandboxRun(exit_code=1, output="", errors="Traceback\nImportError: no resource\n"), batch, 40)
    assert broken[0] == CheckOutcome(
        "a", False, "sandbox refused: its runner stopped (exit code 1) before this check: ImportError: no resource"
    )


def test_batches_stay_inside_the_command_lines_limits() -> None:
    checks = [CodeCheck(str(i), "x = 1\n" * 8000) for i in range(60)]  # 48 KiB each
    batches = list(sandbox._batches(checks))
    assert [c for b in batches for c in b] == checks
    assert all(sum(len(sandbox._argument(c).encode()) for c in b) <= sandbox.MAX_BATCH_BYTES for b in batches)
    assert all(len(b) <= sandbox.MAX_BATCH_CHECKS for b in batches)
    assert len(list(sandbox._batches([check(str(i)) for i in range(120)]))) == 3


def test_a_program_too_long_for_a_command_line_is_refused_without_an_engine() -> None:
    too_long = CodeCheck("long", "x" * (sandbox.MAX_PROGRAM_BYTES + 1))
    unreachable = EngineAddress("tcp://127.0.0.1:9")  # never asked: nothing is left to run
    [outcome] = check_programs(unreachable, "any:image", [too_long], project="deploykit-unit")
    assert outcome == CheckOutcome("long", False, "sandbox refused: the program is 98,305 bytes; a check may be 96 KiB")


def test_the_containers_lines_are_handed_on_whole_as_they_arrive() -> None:
    lines: list[str] = []
    output = _follow([b'{"a":', b' 1}\n{"b"', b": 2}\n", b"partial"], lines.append)
    assert lines == ['{"a": 1}', '{"b": 2}']
    assert output == '{"a": 1}\n{"b": 2}\npartial'


def test_told_it_is_sandboxed_the_runner_checks_nothing_outside_its_container(tmp_path: Path) -> None:
    # Here it is not PID 1 of a container: the checks that a sandbox container would run are refused, unrun.
    marker = tmp_path / "ran"
    rows = run_runner([CodeCheck("a", f"open({str(marker)!r}, 'w')")], tmp_path, sandboxed=True)
    assert rows[:-1] == [{"key": "a", "passed": False, "reason": "sandbox refused: the runner is not the "
                          "container's non-root PID 1"}]  # fmt: skip
    assert not marker.exists()
