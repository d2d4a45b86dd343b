"""Runs INSIDE the vLLM image (tests/e2e/test_gpu_args.py starts it): vLLM's own server start-up, up to the
model and the device, for every command line in the batch it reads as JSON on stdin.

For each check, as `python3 -m vllm.entrypoints.openai.api_server ARGS` would in that image:
1. the entrypoint module runs as ``__main__`` with ``sys.argv`` = the rendered command, so its own code does
   ``cli_env_setup()``, ``FlexibleArgumentParser`` + ``make_arg_parser``, ``parse_args``,
   ``configure_logging_from_args`` and ``validate_parsed_serve_args``; the ``uvloop.run(run_server(args))``
   it ends with is caught before it starts and hands back the parsed arguments;
2. what ``run_server`` → ``setup_server`` checks before it binds a socket: the tool/reasoning parser
   plugins and ``validate_api_server_args`` (the reasoning parser's name);
3. what ``run_server_worker`` → ``build_async_engine_client`` does before the engine starts:
   ``AsyncEngineArgs.from_cli_args(args)`` (EngineArgs' own ``__post_init__`` checks) and
   ``propagate_flash_late_interaction``. Not ``create_engine_config``: that reads the model and the device.
4. every ``VLLM_*`` variable of the service's environment through vLLM's own reader for it
   (``vllm.envs.environment_variables[name]()``), which rejects values it cannot convert.

The model's folder (a bind mount in the stack) is stood in for by an empty directory at the path the
command names. Prints one line ``RESULT_MARK {json}`` at the end: vLLM's version, its registry of
environment variable names and a result per check (``stage`` = where it was refused, ``None`` if not).
Stdlib and vLLM only; nothing here is imported by deploykit or the host's tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import sys
import traceback
import warnings
from typing import Any

RESULT_MARK = "@@deploykit-gpuargs-vllm@@"


class Refused(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _entrypoint_module(entrypoint: list[str]) -> str:
    """The module of ``python3 -m MODULE``, checked to be this image's python3 and importable."""
    import importlib.util

    if len(entrypoint) != 3 or entrypoint[:2] != ["python3", "-m"]:
        raise Refused("entrypoint", f"not `python3 -m MODULE`: {entrypoint!r}")
    python3 = shutil.which("python3")
    if python3 is None or os.path.realpath(python3) != os.path.realpath(sys.executable):
        raise Refused("entrypoint", f"python3 on PATH is {python3}, not vLLM's {sys.executable}")
    if importlib.util.find_spec(entrypoint[2]) is None:
        raise Refused("entrypoint", f"no module {entrypoint[2]} in this image")
    return entrypoint[2]


def _parsed_by_entrypoint(module: str, command: list[str]) -> Any:
    """Run the entrypoint module's own ``__main__`` with the command; return what it would serve with."""
    import uvloop

    captured: dict[str, Any] = {}

    def serve_nothing(coroutine: Any, *args: Any, **kwargs: Any) -> None:
        # ``run_server(args)`` not started yet: its frame holds the parsed arguments.
        captured["args"] = coroutine.cr_frame.f_locals["args"]
        coroutine.close()

    real_run, saved_argv = uvloop.run, sys.argv
    uvloop.run = serve_nothing
    sys.argv = [module, *command]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # argparse's error(): usage and message on stderr, exit 2
        raise Refused("parse_args", stderr.getvalue().strip() or f"exit {exc.code}") from None
    except Exception as exc:  # e.g. validate_parsed_serve_args' TypeError / ValueError
        raise Refused(_raised_in(exc), f"{type(exc).__name__}: {exc}") from None
    finally:
        uvloop.run, sys.argv = real_run, saved_argv
    if "args" not in captured:
        raise Refused("entrypoint", f"{module} as __main__ did not reach uvloop.run(run_server(args))")
    return captured["args"]


def _raised_in(exc: BaseException) -> str:
    """The innermost vLLM function the exception came from (e.g. validate_parsed_serve_args)."""
    names = [f.name for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}vllm{os.sep}" in f.filename]
    return names[-1] if names else type(exc).__name__


def _before_the_socket(args: Any) -> None:
    from vllm.entrypoints.launchers.launcher import validate_api_server_args
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    try:
        if args.tool_parser_plugin and len(args.tool_parser_plugin) > 3:
            ToolParserManager.import_tool_parser(args.tool_parser_plugin)
        if args.reasoning_parser_plugin and len(args.reasoning_parser_plugin) > 3:
            ReasoningParserManager.import_reasoning_parser(args.reasoning_parser_plugin)
        validate_api_server_args(args)
    except Exception as exc:
        raise Refused("validate_api_server_args", f"{type(exc).__name__}: {exc}") from None


def _before_the_engine(args: Any) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import propagate_flash_late_interaction

    # The stack bind-mounts the model's folder there; its contents are the model load, not checked here.
    os.makedirs(args.model, exist_ok=True)
    try:
        engine_args = AsyncEngineArgs.from_cli_args(args)
        propagate_flash_late_interaction(args, engine_args)
    except Exception as exc:
        raise Refused("AsyncEngineArgs.from_cli_args", f"{type(exc).__name__}: {exc}") from None
    _configs_without_the_model(engine_args)


def _configs_without_the_model(engine_args: Any) -> None:
    """The checks of ``create_engine_config`` that need no model, on the values the command gives.

    0.32.0 checks these only inside ``create_engine_config``, after it has read the model: the reasoning
    parser's name (``ReasoningParserManager.get_reasoning_parser``, as ReasoningConfig and the structured
    output manager call it; ``validate_api_server_args`` looks at ``structured_outputs_config``, which the
    flag does not reach before then), ``CacheConfig``'s bounds and ``SchedulerConfig``'s (``max_num_seqs``
    against ``max_num_batched_tokens``). Built as ``create_engine_config`` builds them, with what it takes
    from the model replaced by what the command says: ``max_model_len`` = ``--max-model-len`` (the model
    can only lower it), a text-only decoder model.
    """
    from vllm.config import CacheConfig, SchedulerConfig
    from vllm.reasoning import ReasoningParserManager

    try:
        if engine_args.reasoning_parser:
            ReasoningParserManager.get_reasoning_parser(engine_args.reasoning_parser)
    except Exception as exc:
        raise Refused("ReasoningParserManager.get_reasoning_parser", f"{type(exc).__name__}: {exc}") from None
    try:
        CacheConfig(gpu_memory_utilization=engine_args.gpu_memory_utilization)
    except Exception as exc:
        raise Refused("CacheConfig", f"{type(exc).__name__}: {exc}") from None
    given = (engine_args.max_model_len, engine_args.max_num_batched_tokens, engine_args.max_num_seqs)
    if None in given:  # vLLM fills these from the model and the platform: nothing to check without them
        return
    try:
        SchedulerConfig(
            max_model_len=engine_args.max_model_len,
            is_encoder_decoder=False,
            max_num_batched_tokens=engine_args.max_num_batched_tokens,
            max_num_seqs=engine_args.max_num_seqs,
            enable_chunked_prefill=engine_args.enable_chunked_prefill is not False,
        )
    except Exception as exc:
        raise Refused("SchedulerConfig", f"{type(exc).__name__}: {exc}") from None


def _env_values(environment: dict[str, str]) -> None:
    from vllm import envs

    for name in sorted(environment):
        if name in envs.environment_variables:
            try:
                envs.environment_variables[name]()
            except Exception as exc:
                raise Refused("environment", f"{name}={environment[name]!r}: {type(exc).__name__}: {exc}") from None


def check(entry: dict[str, Any]) -> dict[str, Any]:
    # The service's environment over the image's, as the container would have it. (Defaults vLLM reads at
    # import, e.g. VLLM_LOGGING_CONFIG_PATH, come from the image's; the stacks set none of those.)
    saved_env = dict(os.environ)
    os.environ.update(entry["environment"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            args = _parsed_by_entrypoint(_entrypoint_module(entry["entrypoint"]), entry["command"])
            _before_the_socket(args)
            _before_the_engine(args)
            _env_values(entry["environment"])
            stage, error = None, None
        except Refused as exc:
            stage, error = exc.stage, str(exc)
        except Exception:  # anything else is this script's own fault: say so, do not call it a refusal
            stage, error = "checker", traceback.format_exc()
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
    return {
        "id": entry["id"],
        "stage": stage,
        "error": error,
        "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
    }


def main() -> None:
    batch = json.load(sys.stdin)
    import vllm
    from vllm import envs

    results = [check(entry) for entry in batch["checks"]]
    report = {"version": vllm.__version__, "env_names": sorted(envs.environment_variables), "results": results}
    sys.stdout.flush()
    print(RESULT_MARK, json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
