"""The command line: parse, call the library API (deploykit.app), print (deploykit.cli.output). No decisions.

Only click is imported at module level, so ``deploykit --help`` stays fast; each command imports what it
needs when it runs. The commands live by concern, as the library API does (stack, day2, data, fleet,
measure), and are listed here in the order of the workflow.
"""

from __future__ import annotations

import click

from deploykit import __version__
from deploykit.cli import data, day2, fleet, measure, stack
from deploykit.cli.common import DeployKitGroup


@click.group(cls=DeployKitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--profiles-file", type=click.Path(), help="Extra hardware profiles (TOML) [default: config dir].")
@click.option(
    "--docker-host",
    metavar="URL",
    help="Docker Engine to use (unix://, tcp://, ssh://) [default: DOCKER_HOST].",
)
def cli(debug: bool, profiles_file: str | None, docker_host: str | None) -> None:
    """Plan, render and run a private ChatGPT-style assistant on your own hardware.

    \b
    detect → plan → render → up:
      deploykit detect                     what this machine has
      deploykit plan --profile rtx3060     which backend, context and memory, and why
      deploykit render --profile cpu       write compose.yaml, .env and plan.json
      deploykit up --profile auto          run it and check it answers

    Settings come from flags, DEPLOYKIT_* variables and ~/.config/deploykit/config.toml.
    """


# In the order of the workflow (detect → plan → render → up → day 2 → fleet → measure), which --help keeps.
for command in (
    stack.detect,
    stack.profiles,
    stack.models,
    stack.plan,
    stack.render,
    stack.up,
    day2.status,
    day2.logs,
    day2.restart,
    day2.down,
    day2.chat,
    day2.smoke,
    day2.doctor,
    data.backup,
    data.restore,
    data.upgrade,
    day2.templates,
    fleet.fleet,
    measure.bench,
    measure.tune,
    measure.evaluate,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="deploykit")
