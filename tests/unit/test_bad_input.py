"""The bad-input matrix: every case ends in one sentence with the documented exit code, no traceback,
no secret in the output, and every file in the folder byte-identical afterwards.

Each case id appears in docs/reliability.md's bad-input table (a test below checks it). Engine cases use
an engine that is not there (``unix:///nonexistent.sock``), so none needs Docker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import cli
from tests.unit.bad_input_lan import lan_cases
from tests.unit.conftest import ROOT
from tests.unit.conftest import TINY_GGUF as GGUF

NO_ENGINE = ("--docker-host", "unix:///nonexistent.sock")
CPU = ("-p", "cpu")
# The same model cache for the stack rendered once and for each case, so a re-render can be identical.
BASE_ENV = {"DEPLOYKIT_MODEL_CACHE": "/srv/deploykit-test/models"}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # the class of bad input, as docs/reliability.md groups them
    what: str  # the input, in words
    setup: Callable[[Path], list[str]]  # makes files under the folder, returns the command line
    code: int
    says: str  # a regular expression the output must match
    env: dict[str, str] = field(default_factory=dict)
    never: str = ""  # a regular expression the output must not match


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _env_edit(t: Path, edit: Callable[[str], str]) -> None:
    env = t / "s" / ".env"
    env.write_text(edit(env.read_text(encoding="utf-8")), encoding="utf-8")


def _render_s(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["render", *CPU, "--dir", str(t / "s"), *extra]


def _profiles(body: str) -> Callable[[Path], list[str]]:
    head = "[profiles.x]\n[profiles.x.cpu]\nphysical_cores = 4\nlogical_cores = 8\n[profiles.x.memory]\n"

    def setup(t: Path) -> list[str]:
        path = _write(t / "profiles.toml", head + body)
        return ["--profiles-file", str(path), "plan", "-p", "x"]

    return setup


def _eval_data(data: str | bytes) -> Callable[[Path], list[str]]:
    def setup(t: Path) -> list[str]:
        return [*NO_ENGINE, "eval", "--dir", str(t / "s"), "--dataset", str(_write(t / "d.jsonl", data))]

    return setup


def _eval_fifo(t: Path) -> list[str]:
    os.mkfifo(t / "d.jsonl")
    return [*NO_ENGINE, "eval", "--dir", str(t / "s"), "--dataset", str(t / "d.jsonl")]


def _config(body: str, *args: str) -> Callable[[Path], list[str]]:
    def setup(t: Path) -> list[str]:
        _write(Path(os.environ["XDG_CONFIG_HOME"]) / "deploykit" / "config.toml", body)
        return ["plan", *CPU, *args]

    return setup


def _hf_config(config: str | bytes) -> Callable[[Path], list[str]]:
    def setup(t: Path) -> list[str]:
        _write(t / "model" / "config.json", config)
        return ["plan", "-p", "cpu-vllm", "--model-file", str(t / "model")]

    return setup


def _foreign(files: dict[str, str | bytes]) -> Callable[[Path], list[str]]:
    def setup(t: Path) -> list[str]:
        shutil.rmtree(t / "s")
        for name, data in files.items():
            _write(t / "p" / name, data)
        return ["render", *CPU, "--dir", str(t / "p")]

    return setup


def _then(prepare: Callable[[Path], None], args: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(t: Path) -> list[str]:
        prepare(t)
        return args(t)

    return setup


def _render_k8s_several(t: Path) -> None:
    args = ["render", *CPU, "--model", "smollm2-135m-instruct", "--model", "qwen2.5-1.5b-instruct"]
    result = CliRunner().invoke(cli, [*args, "--target", "kubernetes", "--dir", str(t / "k")], env=BASE_ENV)
    assert result.exit_code == 0, result.output


def _symlink_env(t: Path) -> None:
    elsewhere = t / "elsewhere.env"
    shutil.move(t / "s" / ".env", elsewhere)
    elsewhere.chmod(0o644)
    (t / "s" / ".env").symlink_to(elsewhere)


def _plan_edit(t: Path, text: str) -> None:
    (t / "s" / "plan.json").write_text(text, encoding="utf-8")


def _status(t: Path) -> list[str]:
    return [*NO_ENGINE, "status", "--dir", str(t / "s")]


def _cut_gguf(t: Path) -> list[str]:
    cut = _write(t / "cut.gguf", GGUF.read_bytes()[:300])
    return ["render", *CPU, "--model-file", str(cut), "--dir", str(t / "new")]


PASSWORD_LINE = re.compile(r"^DEPLOYKIT_ADMIN_PASSWORD=.*$", re.M)

def _models_add(t: Path, model_file: Path) -> list[str]:
    return [*NO_ENGINE, "models", "add", "mine", "--model-file", str(model_file), "--dir", str(t / "s")]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _special(path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:
        with path.open("wb") as f:
            f.truncate(200 * 10**9)
    return path


# fmt: off
CASES = [
    # ---- the stack folder is the user's data
    Case("F01", "folder takeover", "plan.json is `{}` beside a foreign .env and compose.yaml",
         _foreign({"plan.json": "{}\n", ".env": "DB_PASSWORD=x\n", "compose.yaml": "services: {}\n"}),
         10, r"plan\.json is not a deploykit plan \(a JSON object without"),
    Case("F02", "folder takeover", "plan.json is not JSON", _foreign({"plan.json": "hello\n"}),
         10, r"is not a deploykit plan \(not JSON\)"),
    Case("F03", "folder takeover", "plan.json is a JSON list", _foreign({"plan.json": "[1, 2]\n"}),
         10, r"JSON of another shape \(list\)"),
    Case("F04", "folder takeover", "a folder of other files, no plan.json",
         _foreign({"notes.txt": "mine\n", "compose.yaml": "services: {}\n"}),
         10, r"holds no deploykit stack \(no plan\.json; found compose\.yaml, notes\.txt\)"),
    Case("F05", "folder takeover", "plan.json is a directory",
         _foreign({"plan.json/x": "x"}), 10, r"plan\.json is a directory"),
    Case("F06", "folder takeover", "a deploykit plan.json whose compose.yaml was edited by hand",
         _then(lambda t: (t / "s" / "compose.yaml").open("a").write("# mine\n"), _render_s()),
         10, r"compose\.yaml was edited by hand.*compose\.override\.yaml.*--force"),
    Case("F07", "folder takeover", "compose.yaml is a symbolic link",
         _then(lambda t: (t / "s" / "compose.yaml").unlink() or (t / "s" / "compose.yaml").symlink_to("/etc/hostname"),
               _render_s()),
         10, r"compose\.yaml is a symbolic link"),
    Case("F08", "folder takeover", "--dir names a file", lambda t: ["render", *CPU, "--dir", str(_write(t / "f", "x"))],
         2, r"is a file"),
    # ---- secrets
    Case("S01", "secret unreadable", "a line that is not KEY=VALUE in .env",
         _then(lambda t: _env_edit(t, lambda s: s + "this is = not ' valid\n"), _render_s()),
         10, r"line 8 of .*\.env: not KEY=VALUE"),
    Case("S02", "secret unreadable", "DEPLOYKIT_ADMIN_PASSWORD= left empty",
         _then(lambda t: _env_edit(t, lambda s: PASSWORD_LINE.sub("DEPLOYKIT_ADMIN_PASSWORD=", s)), _render_s()),
         10, r"DEPLOYKIT_ADMIN_PASSWORD has no value.*delete the line to have a new"),
    Case("S03", "secret unreadable", "a secret with an unquoted $ (compose would expand it)",
         _then(lambda t: _env_edit(t, lambda s: PASSWORD_LINE.sub("DEPLOYKIT_ADMIN_PASSWORD=ab$cd", s)), _render_s()),
         10, r"compose would expand the \$ in DEPLOYKIT_ADMIN_PASSWORD"),
    Case("S04", "secret unreadable", "the same key twice with different values",
         _then(lambda t: _env_edit(t, lambda s: s + "INFERENCE_API_KEY='other'\n"), _render_s()),
         10, r"INFERENCE_API_KEY is set a second time"),
    Case("S05", "secret unreadable", "a byte that is not UTF-8 in .env",
         _then(lambda t: (t / "s" / ".env").open("ab").write(b"NOTE=\xff\n"), _render_s()),
         10, r"line 8 of .*\.env: not UTF-8 text"),
    Case("S06", "secret unreadable", "a secret value in double quotes holding a single quote",
         _then(lambda t: _env_edit(t, lambda s: PASSWORD_LINE.sub("DEPLOYKIT_ADMIN_PASSWORD=\"it's\"", s)),
               _render_s()),
         10, r"the value of DEPLOYKIT_ADMIN_PASSWORD holds quotes"),
    Case("S07", "secret unreadable", ".env removed from an existing stack",
         _then(lambda t: (t / "s" / ".env").unlink(), _render_s()),
         10, r"\.env is missing.*--force"),
    Case("S08", "secret unreadable", ".env is a directory",
         _then(lambda t: (t / "s" / ".env").unlink() or (t / "s" / ".env").mkdir(), _render_s()),
         10, r"\.env is a directory"),
    Case("S09", "secret unreadable", "status on a stack whose .env has a broken line",
         _then(lambda t: _env_edit(t, lambda s: s + "'broken\n"), _status),
         10, r"not KEY=VALUE"),
    Case("S10", "symlinked .env", ".env is a link to a 0644 file elsewhere",
         _then(_symlink_env, _render_s()), 10, r"\.env is a symbolic link.*regular file inside the stack folder"),
    Case("S13", "secret unreadable", "a secret key written without `=`",
         _then(lambda t: _env_edit(t, lambda s: PASSWORD_LINE.sub("DEPLOYKIT_ADMIN_PASSWORD", s)), _render_s()),
         10, r"DEPLOYKIT_ADMIN_PASSWORD has no value"),
    Case("S14", "secret unreadable", ".env is a named pipe (reading it would hang)",
         _then(lambda t: (t / "s" / ".env").unlink() or os.mkfifo(t / "s" / ".env"), _render_s()),
         10, r"\.env is a special file"),
    Case("S11", "comment after a secret", "`  # note` after the password (valid dotenv): kept, not rewritten",
         _then(lambda t: _env_edit(t, lambda s: PASSWORD_LINE.sub(lambda m: m.group(0) + "  # note", s)),
               _render_s()),
         0, r"nothing changed"),
    Case("S12", "comment after a secret", "`export ` before a key and a line added by hand: kept, not rewritten",
         _then(lambda t: _env_edit(t, lambda s: s.replace("INFERENCE_API_KEY", "export INFERENCE_API_KEY") + "X=1\n"),
               _render_s()),
         0, r"nothing changed"),
    Case("F09", "folder takeover", "plan.json is a link to another file",
         _then(lambda t: (t / "s" / "plan.json").unlink() or (t / "s" / "plan.json").symlink_to("/etc/hostname"),
               _render_s()),
         10, r"plan\.json is a symbolic link"),
    Case("F10", "folder takeover", "a .deploykit-staging folder deploykit did not leave",
         _then(lambda t: _write(t / "s" / ".deploykit-staging" / "compose.yaml", "x"), _render_s()),
         10, r"holds no deploykit plan; deploykit did not leave it there"),
    Case("F11", "folder takeover", "--dir through a file (`s/.env/x`)",
         lambda t: ["render", *CPU, "--dir", str(t / "s" / ".env" / "x")], 10, r"Not a directory"),
    # ---- half-written stacks
    Case("H01", "half-written stack", "a model file whose name holds a byte that is not UTF-8",
         lambda t: ["render", *CPU, "--model-file", str(_write(Path(os.fsdecode(bytes(t) + b"/m\xff.gguf")),
                                                               GGUF.read_bytes())), "--dir", str(t / "new")],
         2, r"not UTF-8 text"),
    Case("H02", "half-written stack", "--dir whose name is longer than the file system allows",
         lambda t: ["render", *CPU, "--dir", str(t / ("d" * 300))], 10, r"File name too long"),
    Case("H03", "half-written stack", "--dir where nothing can be created (/proc)",
         lambda t: ["render", *CPU, "--dir", "/proc/deploykit-stack"], 10, r"cannot create the stack folder"),
    # ---- tracebacks that must be sentences
    Case("T01", "number", "`total_gib = nan` in a profiles file", _profiles("total_gib = nan\n"),
         4, r"total_gib = nan is not a size in GiB"),
    Case("T02", "number", "`total_gib = inf` in a profiles file", _profiles("total_gib = inf\n"),
         4, r"total_gib = inf is not a size"),
    Case("T03", "number", "`total_gib = true` in a profiles file", _profiles("total_gib = true\n"),
         4, r"memory: Field required|total_bytes"),
    Case("T04", "number", "`total_bytes = 1e400` (infinite) in a profiles file", _profiles("total_bytes = 1e400\n"),
         4, r"memory\.total_bytes"),
    Case("T05", "number", "fewer logical than physical cores",
         lambda t: ["--profiles-file", str(_write(t / "p.toml", "[profiles.x]\n[profiles.x.cpu]\nphysical_cores = 64\n"
                                                  "logical_cores = 1\n[profiles.x.memory]\ntotal_gib = 16\n")),
                    "plan", "-p", "x"],
         4, r"logical_cores \(1\) is less than physical_cores \(64\)"),
    Case("T06", "encoding", "a profiles file that is not UTF-8",
         lambda t: ["--profiles-file", str(_write(t / "p.toml", b"[profiles.x]\ndescription = '\xff'\n")), "profiles"],
         4, r"profiles file .* is not UTF-8 text \(line 2\)"),
    Case("T07", "encoding", "a host file that is not UTF-8",
         lambda t: ["plan", "--host", str(_write(t / "h.json", b'{"name": "\xff"}'))], 2, r"host file .* not UTF-8"),
    Case("T08", "encoding", "a model config.json that is not UTF-8", _hf_config(b'{"x": "\xfe"}'),
         2, r"model config .* not UTF-8"),
    Case("T09", "model file", "a GGUF file cut short", _cut_gguf, 2, r"is not a readable GGUF file"),
    Case("T10", "model file", "`--model 'my model'` with --model-file",
         lambda t: ["plan", *CPU, "--model", "my model", "--model-file", str(GGUF)], 2, r"is not a model id"),
    Case("T11", "model file", "config.json with 0 attention heads",
         _hf_config('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 0, "vocab_size": 10}'),
         2, r"num_attention_heads is '0', not a positive whole number"),
    Case("T12", "model file", "config.json with negative layers",
         _hf_config('{"hidden_size": 64, "num_hidden_layers": -2, "num_attention_heads": 4, "vocab_size": 10}'),
         2, r"num_hidden_layers is '-2'"),
    Case("T13", "model file", "config.json that is a JSON list", _hf_config("[]"), 2, r"is not a JSON object"),
    Case("T14", "plan.json shape", "status on a plan.json whose stack is empty",
         _then(lambda t: _plan_edit(t, '{"deploykit_version": "0", "stack": {}, "inputs": {}}'), _status),
         10, r"is not a stack plan this deploykit can read"),
    Case("T15", "plan.json shape", "status on a plan.json without inputs",
         _then(lambda t: _plan_edit(t, re.sub(r',\s*"inputs".*', "}", (t / "s" / "plan.json").read_text(),
                                              flags=re.S)), _status),
         10, r"can read \(inputs: missing\)"),
    Case("T17", "plan.json shape", "status on a plan.json whose inputs.model.layers is text",
         _then(lambda t: _plan_edit(t, re.sub(r'("layers": )\d+', r'\1"many"', (t / "s" / "plan.json").read_text())),
               _status),
         10, r"can read \(inputs: model\.layers\)"),
    Case("T16", "number", "a host file that gives a core count as text",
         lambda t: ["plan", "--host", str(_write(t / "h.json", '{"name": "h", "cpu": {"physical_cores": "8", '
                                                 '"logical_cores": 8}, "memory": {"total_bytes": 8589934592}}'))],
         4, r"cpu\.physical_cores: Input should be a valid integer"),
    # ---- engine URLs
    Case("D01", "credentials in URL", "`--docker-host tcp://user:password@host` and status",
         lambda t: ["--docker-host", "tcp://user:hunter2@127.0.0.1:1", "status", "--dir", str(t / "s")],
         6, r"tcp://\*\*\*@127\.0\.0\.1:1"),
    Case("D02", "credentials in URL", "`--docker-host` that is not a URL",
         lambda t: ["--docker-host", "my laptop", "status", "--dir", str(t / "s")],
         4, r"--docker-host: String should match pattern"),
    # ---- settings validated where they enter
    Case("V01", "setting", "a bind address that is not an address", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_WEBUI_BIND: must be an IPv4 address", {"DEPLOYKIT_WEBUI_BIND": "localhost"}),
    Case("V02", "setting", "the UI port equal to the inference port", lambda t: ["plan", *CPU],
         4, r"webui_port and inference_port are both 7861", {"DEPLOYKIT_WEBUI_PORT": "7861"}),
    Case("V03", "setting", "a relative model cache", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_MODEL_CACHE: must be an absolute path", {"DEPLOYKIT_MODEL_CACHE": "models"}),
    Case("V04", "setting", "`--image` that is not an image reference", _render_s("--image", "inference=My Image:1"),
         2, r"is not an image reference"),
    Case("V05", "setting", "an image in the environment that is not a reference", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_IMAGES__OPEN_WEBUI: 'Bad Ref:1' is not an image reference",
         {"DEPLOYKIT_IMAGES__OPEN_WEBUI": "Bad Ref:1"}),
    Case("V06", "setting", "`parallel = true` in config.toml", _config("parallel = true\n"),
         4, r"parallel in .*config\.toml: must be a whole number"),
    Case("V07", "setting", "a fractional context in the environment", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_MAX_CONTEXT: must be a whole number", {"DEPLOYKIT_MAX_CONTEXT": "4096.5"}),
    Case("V08", "setting", "`--context 10`", lambda t: ["plan", *CPU, "--context", "10"],
         4, r"--context: Input should be greater than or equal to 256"),
    Case("V09", "setting", "DEPLOYKIT_IMAGES that is not JSON", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_IMAGES is not valid: it must be a JSON object", {"DEPLOYKIT_IMAGES": "mirror"}),
    Case("V10", "setting", "a port out of range", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_WEBUI_PORT: Input should be less than or equal to 65535", {"DEPLOYKIT_WEBUI_PORT": "70000"}),
    Case("V11", "setting", "a profiles file with a key that is not a profile",
         _profiles("total_gib = 8\n[profile.typo]\n"), 4, r"entries that are not profile tables: profile"),
    Case("V12", "setting", "`gpu_memory_utilization = nan` in config.toml", _config("gpu_memory_utilization = nan\n"),
         4, r"gpu_memory_utilization in .*: must be a finite number"),
    Case("V13", "setting", "an admin e-mail with a quote", lambda t: ["plan", *CPU],
         4, r"DEPLOYKIT_ADMIN_EMAIL: String should match", {"DEPLOYKIT_ADMIN_EMAIL": "a'b@c.de"}),
    Case("V14", "setting", "`--image` naming one service twice", _render_s("--image", "inference=a:1", "--image",
                                                                       "inference=b:2"),
         2, r"--image names inference twice"),
    Case("V15", "setting", "DEPLOYKIT_CONFIG naming a file that does not exist", lambda t: ["plan", *CPU],
         4, r"config file /nonexistent/c\.toml does not exist \(named by DEPLOYKIT_CONFIG\)",
         {"DEPLOYKIT_CONFIG": "/nonexistent/c.toml"}),
    Case("V16", "setting", "config.toml is a directory",
         lambda t: _write(Path(os.environ["XDG_CONFIG_HOME"]) / "deploykit" / "config.toml" / "x", "")
         and ["plan", *CPU], 4, r"config\.toml is a directory"),
    Case("V17", "setting", "`up --timeout nan`",
         lambda t: [*NO_ENGINE, "up", "--dir", str(t / "s"), "--timeout", "nan"], 2, r"nan is not a number of seconds"),
    # ---- words that must not mislead
    Case("W01", "wording", "`--model-file /dev/null`", lambda t: ["plan", *CPU, "--model-file", "/dev/null"],
         2, r"/dev/null is not a regular file or directory"),
    Case("W02", "wording", "`--profiles-file` naming a directory", lambda t: ["--profiles-file", str(t), "profiles"],
         4, r"is not a regular file"),
    Case("W03", "wording", "`logs` with no engine", lambda t: [*NO_ENGINE, "logs", "--dir", str(t / "s")],
         6, r"cannot connect to the Docker Engine at unix:///nonexistent\.sock"),
    Case("W04", "wording", "`status` with no engine", _status, 6, r"cannot connect to the Docker Engine"),
    Case("W05", "wording", "`down` with no engine", lambda t: [*NO_ENGINE, "down", "--dir", str(t / "s")],
         6, r"cannot connect to the Docker Engine"),
    Case("W06", "wording", "`doctor` with a bind address that is not this host's", lambda t: [*NO_ENGINE, "doctor"],
         1, r"port 23860 +10\.255\.255\.1 is not an address of this host",
         {"DEPLOYKIT_WEBUI_BIND": "10.255.255.1", "DEPLOYKIT_WEBUI_PORT": "23860"}),
    Case("W07", "wording", "a model that fits nowhere on the profile",
         lambda t: ["--profiles-file", str(_write(t / "p.toml", "[profiles.b]\n[profiles.b.cpu]\nphysical_cores = 4\n"
                                                  "logical_cores = 4\n[profiles.b.memory]\ntotal_gib = 4\n")),
                    "plan", "-p", "b", "--model", "deepseek-r1-distill-qwen-7b"],
         5, r"Hint: A smaller model fits: --model deepseek-r1-distill-qwen-1\.5b"),
    Case("W08", "wording", "a bad DEPLOYKIT_IMAGES is not blamed on a config.toml that does not exist",
         lambda t: ["plan", *CPU], 4, r"DEPLOYKIT_IMAGES is not valid", {"DEPLOYKIT_IMAGES": "{"},
         never=r"config\.toml"),
    # ---- several models in one stack (issue 17)
    Case("M01", "several models", "2 --model and 1 --model-file",
         lambda t: ["plan", *CPU, "--model", "a", "--model", "b", "--model-file", str(t / "x.gguf")],
         2, r"2 --model and 1 --model-file flags cannot be paired"),
    Case("M02", "several models", "three models that do not fit together on rtx3060",
         lambda t: ["plan", "-p", "rtx3060", "--model", "deepseek-r1-distill-qwen-1.5b",
                    "--model", "deepseek-r1-distill-qwen-7b", "--model", "qwen2.5-1.5b-instruct"],
         5, r"model qwen2\.5-1\.5b-instruct cannot be served in this stack.*Hint: Qwen2\.5-1\.5B-Instruct \(llamacpp"),
    Case("M03", "several models", "the same model twice",
         lambda t: ["plan", *CPU, "--model", "smollm2-135m-instruct", "--model", "smollm2-135m-instruct"],
         5, r"model smollm2-135m-instruct is given twice"),
    Case("M04", "several models", "`up` of a stack of several models rendered for kubernetes (kubectl applies it)",
         _then(_render_k8s_several, lambda t: ["up", "--dir", str(t / "k")]),
         2, r"holds Kubernetes manifests; deploykit does not run them itself"),
    Case("M06", "several models", "`render --target swarm` of two servers on one GPU",
         lambda t: ["render", "-p", "rtx3060", "--model", "deepseek-r1-distill-qwen-1.5b",
                    "--model", "deepseek-r1-distill-qwen-7b", "--target", "swarm", "--dir", str(t / "s")],
         2, r"Swarm cannot run 2 servers of this stack on one GPU"),
    Case("M05", "several models", "`--image inference=` for a stack of several models",
         lambda t: ["render", *CPU, "--model", "smollm2-135m-instruct", "--model", "qwen2.5-1.5b-instruct",
                    "--image", "inference=mirror/llama:1.0", "--dir", str(t / "s")],
         2, r"--image inference names one server, and a stack of several models has one per backend"),
    Case("M07", "several models", "`models remove` of a model the stack does not serve",
         lambda t: ["models", "remove", "nope", "--dir", str(t / "s")],
         2, r"the stack does not serve a model 'nope'.*Hint: It serves deepseek-r1-distill-qwen-1\.5b"),
    Case("M08", "several models", "`models remove` of the stack's only model",
         lambda t: ["models", "remove", "deepseek-r1-distill-qwen-1.5b", "--dir", str(t / "s")],
         2, r"a stack keeps at least one model"),
    Case("M09", "several models", "`models add` of a model the stack serves already",
         lambda t: ["models", "add", "deepseek-r1-distill-qwen-1.5b", "--dir", str(t / "s")],
         2, r"the stack serves deepseek-r1-distill-qwen-1\.5b already"),
    Case("M10", "several models", "`models add` with a backend deploykit does not know",
         lambda t: ["models", "add", "qwen2.5-1.5b-instruct", "--backend", "ollama", "--dir", str(t / "s")],
         2, r"backend 'ollama' is not known"),
    # `models add --model-file`: the file is vetted before the stack is (nothing written, no engine asked)
    Case("M11", "several models", "`models add --model-file` of a named pipe",
         lambda t: _models_add(t, _special(t / "m.gguf", "fifo")), 2, r"m\.gguf is not a regular file or directory"),
    Case("M12", "several models", "`models add --model-file` of random bytes named .gguf",
         lambda t: _models_add(t, _bytes(t / "m.gguf", bytes(range(256)) * 16)),
         2, r"m\.gguf is not a readable GGUF file \(ValueError: no GGUF magic\)"),
    Case("M13", "several models", "`models add --model-file` of an empty .gguf",
         lambda t: _models_add(t, _bytes(t / "m.gguf", b"")), 2, r"m\.gguf is not a readable GGUF file"),
    Case("M14", "several models", "`models add --model-file` of a 200 GB sparse file (not read whole)",
         lambda t: _models_add(t, _special(t / "m.gguf", "sparse")), 2, r"m\.gguf is not a readable GGUF file"),
    Case("M15", "several models", "`models add --model-file` of a folder without config.json",
         lambda t: _models_add(t, _special(t / "weights", "dir")), 2, r"weights has no config\.json"),
    Case("M16", "several models", "`models add --model-file` of a GGUF cut after its magic",
         lambda t: _models_add(t, _bytes(t / "m.gguf", b"GGUF\x03\x00")), 2, r"m\.gguf is not a readable GGUF file"),
    # ---- `eval --dataset`: refused before any stack or engine is touched
    Case("E01", "eval data", "a --dataset file that is not JSON Lines", _eval_data("hello\n"),
         2, r"line 1 of --dataset file .*d\.jsonl is not JSON\."),
    Case("E02", "eval data", "a --dataset item without question and answer", _eval_data('{"q": 1, "a": 2}\n'),
         2, r"line 1 of .* has no question and answer \(its fields: a, q\)"),
    Case("E03", "eval data", "a --dataset file that is not UTF-8", _eval_data(b'{"prompt": "\xff", "answer": "1"}\n'),
         2, r"--dataset file .*d\.jsonl is not UTF-8 text \(line 1\)"),
    Case("E04", "eval data", "a --dataset that is a named pipe", _eval_fifo,
         2, r"--dataset file .*d\.jsonl is a named pipe, not a regular file"),
    Case("E05", "eval data", "an empty --dataset file", _eval_data("\n\n"), 2, r"d\.jsonl holds no items"),
    Case("E06", "eval data", "a --dataset line of over 1 MiB",
         _eval_data('{"prompt": "' + "x" * (1 << 20) + '", "answer": "1"}\n'),
         2, r"line 1 of .* is 1,048,60\d characters; an item may be 1 MiB"),
    Case("E07", "eval data", "a --dataset line that is a JSON list", _eval_data('[1, 2]\n'),
         2, r"line 1 of .* is JSON list, not an object"),
    Case("E08", "eval data", "a --dataset file that does not exist",
         lambda t: [*NO_ENGINE, "eval", "--dir", str(t / "s"), "--dataset", str(t / "none.jsonl")],
         2, r"cannot read --dataset file .*none\.jsonl: No such file"),
    Case("E09", "eval data", "a --dataset mixing GSM8K and plain items",
         _eval_data('{"question": "q", "answer": "#### 1"}\n{"prompt": "p", "answer": "2"}\n'),
         2, r"mixes formats \(gsm8k, plain\)"),
    Case("E10", "eval data", "`--suite` and `--dataset` together",
         lambda t: [*_eval_data('{"prompt": "p", "answer": "2"}\n')(t), "--suite", "humaneval"],
         2, r"--suite and --dataset both say what to ask"),
    Case("E11", "eval data", "the same `--model` twice",
         lambda t: [*_eval_data('{"prompt": "p", "answer": "2"}\n')(t), "--model", "a", "--model", "a"],
         2, r"the same --model is given twice.*Hint: Give two different --model names"),
    Case("E12", "eval data", "two `--model` and `--compare` (four runs)",
         lambda t: [*_eval_data('{"prompt": "p", "answer": "2"}\n')(t), "--model", "a", "--model", "b",
                    "--compare", str(t / "s2")],
         2, r"eval compares two runs, and 4 were asked for"),
    # ---- the second pass (issue 19): tests/unit/bad_input_lan.py
    *lan_cases(Case),
]
# fmt: on


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every entry under ``root``: its kind, content (or link target) and mode."""
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(path)] = ("link", os.readlink(path), st.st_mode)
            elif stat.S_ISREG(st.st_mode) and st.st_size > 1 << 30:  # a sparse file a case made: size and time
                out[str(path)] = ("file", f"{st.st_size} {st.st_mtime_ns}", st.st_mode)
            elif stat.S_ISREG(st.st_mode):
                out[str(path)] = ("file", path.read_bytes(), st.st_mode)
            else:  # a folder, or a pipe a case made (reading it would hang)
                out[str(path)] = ("other", b"", st.st_mode)
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cpu stack, rendered once and copied into each case's folder."""
    folder = tmp_path_factory.mktemp("rendered") / "s"
    env = {"XDG_CONFIG_HOME": str(folder.parent / "config"), "XDG_CACHE_HOME": str(folder.parent / "cache")}
    env |= BASE_ENV
    result = CliRunner().invoke(cli, ["render", *CPU, "--dir", str(folder)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, rendered: Path, tmp_path: Path) -> None:
    shutil.copytree(rendered, tmp_path / "s", symlinks=True)
    args = case.setup(tmp_path)
    env_lines = (rendered / ".env").read_text().splitlines()
    secrets = [line.split("=", 1)[1].strip("'") for line in env_lines if "='" in line]
    before = _snapshot(tmp_path)
    # Bounded time: a case that would block (a named pipe opened for reading) fails instead of hanging.
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"{case.id} did not finish within 60 s"))
    signal.alarm(60)
    try:
        result = CliRunner().invoke(cli, args, env=BASE_ENV | case.env, catch_exceptions=False)
    finally:
        signal.alarm(0)
    output = result.output
    assert result.exit_code == case.code, output
    assert re.search(case.says, output, re.S | re.M), output
    assert "Traceback" not in output and "internal error" not in output
    assert not (case.never and re.search(case.never, output)), output
    for secret in [*secrets, "hunter2"]:
        assert secret not in output or secret == "admin@deploykit.local"
    assert _snapshot(tmp_path) == before, "files changed"
    if case.code not in (0, 1):
        assert len([line for line in output.splitlines() if line.startswith("Error: ")]) == 1, output


def test_every_case_is_in_the_docs() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| ") and "|" in line[2:]}
    for case in CASES:
        assert case.id in rows, f"{case.id} is missing from docs/reliability.md"
        assert f"| {case.code} |" in rows[case.id], f"{case.id}: the doc gives another exit code"


def test_exit_codes_are_documented() -> None:
    from deploykit.values.errors import EXIT_CODES

    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert f"| {code} |" in doc, f"exit code {code} is missing from docs/reliability.md"
        assert code == 0 or f"| {code} |" in readme, f"exit code {code} is missing from README's table"


def test_every_class_is_covered() -> None:
    assert len(CASES) >= 140
    # The second pass: each class of issue 19 has its cases (I hangs/internal errors, P secrets, R refused,
    # O output checked, A archives, X site templates; cost that grows is benchmarks/inventory.py).
    for prefix in "IPROAX":
        assert len([c for c in CASES if c.id.startswith(prefix)]) >= 4, prefix
    assert len({c.id for c in CASES}) == len(CASES)


def test_names_from_files_are_printed_not_parsed_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    # A GGUF's general.name or a plan.json's model is the user's text: "[/x]" must print, not raise.
    from deploykit.app.stack import plan_only
    from deploykit.cli import output
    from deploykit.config.settings import load_settings

    _, _, plan = plan_only(load_settings(), profile="cpu", host_file=None, model_id=None, model_path=None)
    output.show_plan(plan.model_copy(update={"model_name": "evil [/x] [bold]name"}))
    assert "evil [/x] [bold]name" in capsys.readouterr().out
