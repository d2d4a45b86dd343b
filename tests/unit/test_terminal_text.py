"""What the CLI's one error handler prints of a value quoted back from the command line or a file."""

from __future__ import annotations

from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.values.redact import for_terminal


def test_a_huge_value_quoted_in_an_error_is_clipped_with_its_length() -> None:
    name = "x" * 100_000
    result = CliRunner().invoke(cli, ["plan", "--profile", name])
    assert result.exit_code == 3, result.output
    assert "…(100000 characters)" in result.output and len(result.output) < 1000


def test_words_of_ordinary_length_and_paths_are_left_whole() -> None:
    path = "/srv/" + "/".join(["folder"] * 30)  # 215 characters
    assert for_terminal(f"no stack in {path} (no plan.json)") == f"no stack in {path} (no plan.json)"
