"""The stack folder as the user's data: all-or-nothing writes, recovery, hand edits, secrets never rotated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.seams import stackdir
from deploykit.seams.stackdir import STAGING, STAGING_PARTIAL
from deploykit.values.errors import UsageError
from deploykit.values.stackfiles import SECRET_KEYS, sha256


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def render(stack: Path, *extra: str):
    return run("render", "-p", "cpu", "--dir", str(stack), *extra)


def files(stack: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stack.iterdir()) if p.is_file()}


def test_plan_records_the_compose_hash(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    plan = json.loads((stack / "plan.json").read_text())
    assert plan["files"]["compose.yaml"] == sha256((stack / "compose.yaml").read_bytes())


def test_interrupted_write_leaves_the_old_or_the_new_stack(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    old = files(stack)
    # Ctrl-C while the new files are being moved into place: after compose.yaml, before plan.json.
    moved: list[str] = []
    real_replace = Path.replace

    def replace_then_interrupt(self: Path, target: Path) -> Path:  # type: ignore[override]
        if self.parent.name == STAGING and moved:
            raise KeyboardInterrupt
        moved.append(self.name)
        return real_replace(self, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "replace", replace_then_interrupt)
        result = render(stack, "--context", "2048")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert (stack / STAGING).is_dir()  # complete, half moved: the next run finishes it
    status = run("--docker-host", "unix:///nonexistent.sock", "status", "--dir", str(stack))
    assert status.exit_code == 6  # the stack was readable: only the engine is missing
    assert not (stack / STAGING).exists()
    new = files(stack)
    assert new != old and new[".env"] == old[".env"]
    assert json.loads(new["plan.json"])["stack"]["plan"]["context_length"] == 2048
    assert render(stack, "--context", "2048").output.count("nothing changed") == 1


def test_an_unfinished_staging_folder_is_removed_and_the_old_stack_kept(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    old = files(stack)
    partial = stack / f"{STAGING_PARTIAL}abc"
    partial.mkdir()
    (partial / "compose.yaml").write_text("half")
    assert "nothing changed" in render(stack).output
    assert not partial.exists() and files(stack) == old


def test_a_half_written_folder_from_an_earlier_version_is_recovered(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    secrets = (stack / ".env").read_bytes()
    (stack / "plan.json").unlink()
    (stack / ".plan.json.x1y2.tmp").write_text("{")
    result = render(stack)
    assert result.exit_code == 0, result.output
    assert (stack / ".env").read_bytes() == secrets
    assert sorted(p.name for p in stack.iterdir()) == [".env", "compose.yaml", "plan.json"]


def test_force_overwrites_a_hand_edit_and_keeps_a_backup(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    edited = (stack / "compose.yaml").read_text() + "# mine\n"
    (stack / "compose.yaml").write_text(edited)
    assert render(stack).exit_code == 10
    assert render(stack, "--force").exit_code == 0
    backups = list(stack.glob("compose.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == edited
    assert "# mine" not in (stack / "compose.yaml").read_text()
    assert render(stack).exit_code == 0  # the backup is not taken for a foreign file


def test_a_deleted_secret_line_is_generated_and_said_and_hand_lines_survive(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    env = stack / ".env"
    lines = [line for line in env.read_text().splitlines() if not line.startswith("INFERENCE_API_KEY=")]
    env.write_text("\n".join([*lines, "# my note", "EXTRA='kept'"]) + "\n")
    result = render(stack)
    assert result.exit_code == 0
    assert "INFERENCE_API_KEY was not in .env: a new one was generated" in result.output
    text = env.read_text()
    assert "# my note\nEXTRA='kept'\nINFERENCE_API_KEY='sk-" in text
    assert stackdir.read_secrets(stack)["INFERENCE_API_KEY"].startswith("sk-")
    assert oct(env.stat().st_mode & 0o777) == "0o600"


def test_a_lost_env_needs_force(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    (stack / ".env").unlink()
    assert render(stack).exit_code == 10
    assert render(stack, "--force").exit_code == 0
    assert set(stackdir.read_secrets(stack)) == set(SECRET_KEYS)


def test_an_unreadable_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    real = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == ".env":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    result = render(stack)
    assert result.exit_code == 10 and "cannot read" in result.output and "Permission denied" in result.output


def test_an_unexpected_exception_is_an_internal_error_with_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret-looking detail")

    monkeypatch.setattr("deploykit.app.stack.plan_only", boom)
    result = run("plan", "-p", "cpu")
    assert result.exit_code == 70
    assert "Traceback" not in result.output and "secret-looking detail" not in result.output
    assert "internal error (RuntimeError)" in result.output
    crash = next((isolated_home / "cache" / "deploykit" / "crash").iterdir())
    assert "secret-looking detail" in crash.read_text() and oct(crash.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(RuntimeError):
        run("--debug", "plan", "-p", "cpu")


def test_write_stack_is_all_or_nothing_when_a_file_cannot_be_encoded(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    with pytest.raises(UsageError):
        stackdir.write_stack(stack, {"compose.yaml": "ok", "plan.json": "bad \udcff"})
    assert not stack.exists()
