"""doctor's checks on recorded hosts (the real H200 detection), and `up` without an engine."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from deploykit.app.resolve import load_host_file
from deploykit.app.stack import StackRequest, render_stack
from deploykit.cli import cli
from deploykit.config.settings import load_settings
from deploykit.running.doctor import run_checks
from deploykit.running.stack import load_stack
from deploykit.seams.engine import EngineAddress
from deploykit.values.host import HostProfile
from tests.unit.conftest import H200


def h200_stack(tmp_path: Path) -> tuple[HostProfile, Path]:
    result = render_stack(load_settings(), StackRequest(tmp_path / "h200", profile="auto", host_file=H200))
    return load_host_file(H200), result.stack_dir


def by_name(checks: list) -> dict:
    return {c.name: c for c in checks}


def test_h200_without_engine_fails_engine_and_passes_gpu_and_driver(tmp_path: Path) -> None:
    host, stack_dir = h200_stack(tmp_path)
    checks = by_name(run_checks(host, EngineAddress(), tmp_path, load_stack(stack_dir)))
    assert checks["engine"].status == "fail" and "dockerd" in checks["engine"].fix
    assert checks["compose"].status == "fail"
    assert checks["gpu"].status == "pass" and "NVIDIA H200" in checks["gpu"].detail
    assert checks["driver"].status == "pass" and "13.0" in checks["driver"].detail


def test_an_old_driver_fails_against_the_vllm_image(tmp_path: Path) -> None:
    host, stack_dir = h200_stack(tmp_path)
    old = host.model_copy(update={"gpus": (host.gpus[0].model_copy(update={"cuda_version": "12.2"}),)})
    checks = by_name(run_checks(old, EngineAddress(), tmp_path, load_stack(stack_dir)))
    assert checks["driver"].status == "fail"
    assert "12.2" in checks["driver"].detail and checks["driver"].fix


def test_up_without_an_engine_says_so_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "stack"
    result = CliRunner().invoke(
        cli, ["--docker-host", "unix:///nonexistent/docker.sock", "up", "-p", "cpu", "--dir", str(target)]
    )
    assert result.exit_code == 6, result.output
    assert "cannot connect to the Docker Engine at unix:///nonexistent/docker.sock" in result.output
    assert "Hint:" in result.output and "Traceback" not in result.output
    assert not target.exists()


def test_doctor_json_shape(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--docker-host", "unix:///nonexistent/docker.sock", "doctor", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["ok"] is False
    assert {c["status"] for c in report["checks"]} <= {"pass", "warn", "fail"}


def test_the_driver_minimum_and_the_older_cuda_image_come_from_versions_toml(tmp_path: Path) -> None:
    from deploykit.backends import named
    from deploykit.values.versions import pinned

    host, stack_dir = h200_stack(tmp_path)
    old = host.model_copy(update={"gpus": (host.gpus[0].model_copy(update={"cuda_version": "12.9"}),)})
    driver = by_name(run_checks(old, EngineAddress(), tmp_path, load_stack(stack_dir)))["driver"]
    vllm = named("vllm").gpu_image(pinned())
    assert driver.status == "fail" and f"CUDA {vllm.cuda_text}" in driver.detail and vllm.driver in driver.detail
    assert f"--image inference={vllm.fallback}" in driver.fix
