"""The stack folder is the user's data: who owns it, its secrets, and all-or-nothing writes.

- A folder is deploykit's only when its ``plan.json`` is a deploykit plan (or it is empty, or it is a
  half-written stack deploykit itself left). Anything else is refused, naming what was found.
- ``.env`` is read with a real dotenv parser (``export``, comments, quotes). A secret that cannot be read
  stops the run, naming the key and line, never the value. An existing ``.env`` is kept as it is; only
  missing keys are appended, so lines added by hand survive. A symlinked ``.env`` is refused: secrets live
  in a regular 0600 file inside the stack folder, nowhere else.
- ``plan.json`` records the SHA-256 of the ``compose.yaml`` deploykit wrote, so a hand edit is noticed and
  not overwritten without ``--force`` (which keeps a backup).
- Files are written into a staging folder inside the stack folder, which is renamed complete, then moved
  into place with ``plan.json`` last. An interrupted write leaves the old stack (an incomplete staging
  folder, removed by the next run) or the new one (a complete staging folder, finished by the next run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.seams import diskspace
from deploykit.values.errors import StackDirError
from deploykit.values.stackfiles import (
    ENV_FILE,
    PLAN_FILE,
    PRIVATE_FILES,
    SECRET_KEYS,
    SITE_FILES,
    STACK_FILES,
    TARGET_FILES,
    control_characters,
    encode_files,
    env_quote,
    sha256,
)

STAGING = ".deploykit-staging"  # complete new files, being moved into place
STAGING_PARTIAL = ".deploykit-staging-"  # prefix of a staging folder still being written
COMPOSE_HEADER = "# Rendered by deploykit"
FORCE_HINT = (
    "Put your changes in compose.override.yaml beside it (compose merges that file and deploykit never "
    "touches it), or render with --force to overwrite (the edited file is kept as compose.yaml.bak-TIME)."
)


def _kind(path: Path) -> str | None:
    """None when absent, "file" for a regular file, else what it is, for messages."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackDirError(f"cannot look at {path}: {exc.strerror}.", "Check the folder's permissions.") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file (device, pipe or socket)"


MAX_STACK_FILE = 64 * 1024 * 1024  # compose.yaml, plan.json and .env are kilobytes; more is not deploykit's


def _read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_STACK_FILE:
            raise StackDirError(
                f"{path} is larger than {MAX_STACK_FILE // 1024**2} MiB, so deploykit did not write it.",
                "Move it away; deploykit writes its stack files itself.",
            )
        return path.read_bytes()
    except OSError as exc:
        raise StackDirError(f"cannot read {path}: {exc.strerror}.", "Check the file's owner and permissions.") from None


def check_stack_file(path: Path) -> None:
    """The stack file compose (or `docker stack deploy`) will read: a regular file or absent, never a pipe
    (compose would block reading it) or a link out of the folder."""
    _regular(path, f"Move it away and render the stack again; deploykit writes {path.name} as a regular file.")


def read_stack_file(stack_dir: Path, name: str) -> str:
    """A file deploykit wrote into the stack folder, as text: a regular file (a pipe there would block), bounded."""
    path = stack_dir / name
    if not _regular(path, f"Render the stack again; deploykit writes {name} as a regular file."):
        raise StackDirError(f"{path} is missing.", "Render the stack again with `deploykit render` (secrets are kept).")
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StackDirError(f"{path} is not UTF-8 text (line {line}).", "Render the stack again.") from None


def _regular(path: Path, why: str) -> bool:
    """True when ``path`` is a regular file, False when absent; refuses anything else."""
    kind = _kind(path)
    if kind in (None, "file"):
        return kind == "file"
    raise StackDirError(f"{path} is {kind}, not a file deploykit wrote.", why)


def is_deploykit_plan(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("deploykit_version"), str)
        and isinstance(data.get("stack"), dict)
    )


def _describe_plan(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The plan when ``raw`` is a deploykit plan, else None and what it is instead."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError:
        return None, "not JSON"
    except RecursionError:
        return None, "JSON nested too deeply"
    if is_deploykit_plan(data):
        return data, ""
    if isinstance(data, dict):
        return None, "a JSON object without deploykit_version and stack"
    return None, f"JSON of another shape ({type(data).__name__})"


def read_plan(stack_dir: Path) -> dict[str, Any] | None:
    """The folder's plan.json as data, None when there is none; refuses one that is not a deploykit plan."""
    path = stack_dir / PLAN_FILE
    if not _regular(path, "Choose another --dir; deploykit only writes into folders it created."):
        return None
    data, what = _describe_plan(_read_bytes(path))
    if data is None:
        raise StackDirError(
            f"{path} is not a deploykit plan ({what}), so {stack_dir} is not a deploykit stack.",
            "Choose another --dir; deploykit does not overwrite files it did not write.",
        )
    _refuse_newer(path, data["deploykit_version"])
    return data


def _version_key(version: str) -> tuple[int, ...] | None:
    """The release numbers of a version ("0.10.2rc1" -> (0, 10, 2)); None when it does not start with one."""
    import re

    head = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in head.group(0).split(".")) if head else None


def _refuse_newer(path: Path, written_by: str) -> None:
    """A plan written by a newer deploykit may hold what this one would drop or misread when it rewrites it."""
    from deploykit import __version__

    theirs, ours = _version_key(written_by), _version_key(__version__)
    if theirs is not None and ours is not None and theirs > ours:
        raise StackDirError(
            f"{path} was written by deploykit {written_by[:40]}, newer than this deploykit {__version__}; "
            "it would misread or rewrite that stack.",
            f"Use deploykit {written_by[:40]} or newer for this stack (`deploykit --version` says which runs).",
        )


# ---------------------------------------------------------------- recovery


def _legacy_temp(name: str) -> bool:
    # Earlier versions wrote each file as .NAME.XXXX.tmp beside it.
    return any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in STACK_FILES)


def _finish_staging(stack_dir: Path) -> None:
    staging = stack_dir / STAGING
    for path in sorted(staging.iterdir(), key=lambda p: p.name == PLAN_FILE):  # plan.json last
        if path.is_dir() and not path.is_symlink():  # a folder of rendered files (the router's presets)
            (stack_dir / path.name).mkdir(exist_ok=True)
            for inner in path.iterdir():
                inner.replace(stack_dir / path.name / inner.name)
            path.rmdir()
        else:
            path.replace(stack_dir / path.name)
    staging.rmdir()
    _fsync_dir(stack_dir)


def recover(stack_dir: Path) -> bool:
    """Finish or undo a write deploykit left interrupted; True when something was done."""
    if not stack_dir.is_dir():
        return False
    current = stack_dir / PLAN_FILE
    if _kind(current) not in (None, "file") or (
        _kind(current) == "file" and _describe_plan(_read_bytes(current))[0] is None
    ):
        return False  # not a deploykit folder: nothing here is ours to finish or remove
    done = False
    try:
        for path in stack_dir.iterdir():
            if path.name.startswith(STAGING_PARTIAL) and _kind(path) == "a directory":
                shutil.rmtree(path)  # never completed: the old stack is intact
                done = True
        if _kind(stack_dir / STAGING) == "a directory":
            staged_plan = stack_dir / STAGING / PLAN_FILE
            if not (_kind(staged_plan) == "file" and _describe_plan(_read_bytes(staged_plan))[0]):
                raise StackDirError(
                    f"{stack_dir / STAGING} holds no deploykit plan; deploykit did not leave it there.",
                    "Move it away and run the command again.",
                )
            _finish_staging(stack_dir)
            done = True
    except OSError as exc:
        raise StackDirError(
            f"cannot finish the interrupted write in {stack_dir}: {exc.strerror}.", "Check the folder's permissions."
        ) from None
    return done


def _legacy_half_written(stack_dir: Path, entries: set[str]) -> bool:
    """compose.yaml and/or .env without plan.json, as an interrupted earlier version left them."""
    ours = {"compose.yaml", ENV_FILE}
    if not entries & ours or any(e not in ours and not _legacy_temp(e) for e in entries):
        return False
    compose = stack_dir / "compose.yaml"
    if "compose.yaml" in entries:
        if not _regular(compose, "Choose another --dir."):
            return False
        if not _read_bytes(compose).startswith(COMPOSE_HEADER.encode()):
            return False
    elif not any(_legacy_temp(e) for e in entries):
        return False  # a lone .env is somebody's file, not our leftover
    for e in entries:
        if _legacy_temp(e):
            (stack_dir / e).unlink()
    return True


# ---------------------------------------------------------------- .env


@dataclass(frozen=True)
class EnvFile:
    """The stack's .env: its text as found (None when absent) and the secrets read from it."""

    path: Path
    text: str | None = None
    values: dict[str, str] = field(default_factory=dict)


def _env_problem(path: Path, line: int, problem: str, key: str | None = None) -> StackDirError:
    fix = (
        f"Fix line {line} ({key}='value', in single quotes), or delete the line to have a new {key} generated."
        if key
        else f"Fix or delete line {line}: every line is KEY=VALUE, a comment (#) or empty."
    )
    return StackDirError(f"line {line} of {path}: {problem}.", fix)


def read_env(stack_dir: Path) -> EnvFile:
    """Parse .env; every secret it names must be readable. Never puts a value in an error."""
    from dotenv.parser import parse_stream

    path = stack_dir / ENV_FILE
    if not _regular(
        path,
        "deploykit keeps secrets only in a regular file inside the stack folder (mode 0600): replace the link "
        f'with the file itself (`cp --remove-destination "$(readlink -f {path})" {path}`).',
    ):
        return EnvFile(path)
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _env_problem(path, line, "not UTF-8 text") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise _env_problem(path, line, "not KEY=VALUE (compose would refuse it too)")
        key = binding.key
        if key not in SECRET_KEYS:
            continue  # a line added by hand: kept as it is
        raw_value = binding.original.string.split("=", 1)[1].lstrip() if "=" in binding.original.string else ""
        value = binding.value
        if value is None or not value.strip():
            raise _env_problem(path, line, f"{key} has no value", key)
        if any(c in value for c in "'\n\r") or (value != value.strip()):
            raise _env_problem(path, line, f"the value of {key} holds quotes, newlines or edge spaces", key)
        if control_characters(value):
            raise _env_problem(path, line, f"the value of {key} holds a control character (NUL, escape …)", key)
        if "$" in value and not raw_value.startswith("'"):
            raise _env_problem(path, line, f"compose would expand the $ in {key}'s value", key)
        if key in values and values[key] != value:
            raise _env_problem(path, line, f"{key} is set a second time, to another value", key)
        values[key] = value
    return EnvFile(path, text, values)


def read_secrets(stack_dir: Path) -> dict[str, str]:
    """The secrets an earlier render stored, so re-rendering never rotates them."""
    return read_env(stack_dir).values


def merged_env(existing: EnvFile, secrets: Mapping[str, str], fresh_text: str) -> str:
    """The .env to write: a new one, or the existing file as it is with lines for missing keys appended."""
    if existing.text is None:
        return fresh_text
    missing = [k for k in SECRET_KEYS if k not in existing.values]
    if not missing:
        return existing.text
    text = existing.text if not existing.text or existing.text.endswith("\n") else existing.text + "\n"
    return text + "".join(f"{k}={env_quote(secrets[k])}\n" for k in missing)


def env_with(text: str, values: Mapping[str, str]) -> str:
    """The .env ``text`` with each of ``values`` set: a line holding another value is replaced where it is, a
    missing key appended; every other line kept as it was (the same values give the same text)."""
    from dotenv.parser import parse_stream

    if not values:
        return text
    out, seen = [], set()
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        key = binding.key
        if key is not None and key in values and not binding.error:
            seen.add(key)
            if binding.value != values[key]:
                lead = original[: len(original) - len(original.lstrip())]
                original = f"{lead}{key}={env_quote(values[key])}" + ("\n" if original.endswith("\n") else "")
        out.append(original)
    text = "".join(out)
    missing = [k for k in values if k not in seen]
    if missing and text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{k}={env_quote(values[k])}\n" for k in missing)


# ---------------------------------------------------------------- render-time checks


@dataclass(frozen=True)
class ExistingStack:
    """What a render finds in the folder: its plan (None for a new stack) and its .env."""

    dir: Path
    plan: dict[str, Any] | None
    env: EnvFile


def open_for_render(stack_dir: Path) -> ExistingStack:
    """Refuse a folder that is not ours; finish an interrupted write; read the secrets. Writes nothing else."""
    try:
        stack_dir.stat()
    except FileNotFoundError:
        if stack_dir.is_symlink():
            raise StackDirError(f"{stack_dir} is a symbolic link to nothing.", "Choose another --dir.") from None
    except OSError as exc:
        raise StackDirError(f"cannot use {stack_dir} as --dir: {exc.strerror}.", "Choose another --dir.") from None
    if stack_dir.exists() and not stack_dir.is_dir():
        raise StackDirError(f"{stack_dir} exists and is not a folder.", "Choose another --dir.")
    if not stack_dir.is_dir():
        return ExistingStack(stack_dir, None, EnvFile(stack_dir / ENV_FILE))
    recover(stack_dir)
    try:
        # A site may prepare its own files before the first render: deploykit writes neither of them.
        entries = {
            p.name for p in stack_dir.iterdir() if not p.name.startswith(STAGING_PARTIAL) and p.name not in SITE_FILES
        }
    except OSError as exc:
        raise StackDirError(f"cannot list {stack_dir}: {exc.strerror}.", "Check the folder's permissions.") from None
    plan = read_plan(stack_dir)
    if plan is None and entries and not _legacy_half_written(stack_dir, entries):
        shown = ", ".join(sorted(entries)[:5]) + (" …" if len(entries) > 5 else "")
        raise StackDirError(
            f"{stack_dir} is not empty and holds no deploykit stack (no plan.json; found {shown}).",
            "Choose an empty or new --dir; deploykit does not overwrite files it did not write.",
        )
    for name in TARGET_FILES.values():
        _regular(stack_dir / name, f"Move it away; deploykit writes {name} as a regular file.")
    return ExistingStack(stack_dir, plan, read_env(stack_dir))


def backup_needed(existing: ExistingStack, name: str, new_text: str, force: bool) -> bool:
    """Whether the current stack file ``name`` must be kept as a backup; refuses a hand edit without ``force``."""
    path = existing.dir / name
    if existing.plan is None or _kind(path) != "file":
        return False
    current = _read_bytes(path)
    if current == new_text.encode("utf-8"):
        return False
    files = existing.plan.get("files")
    recorded = files.get(name) if isinstance(files, dict) else None
    if recorded == sha256(current):
        return False
    if recorded is None:
        return True  # written by a version that kept no hash: cannot tell, so keep a copy
    if not force:
        raise StackDirError(f"{path} was edited by hand since deploykit wrote it; render would undo that.", FORCE_HINT)
    return True


# ---------------------------------------------------------------- writing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_UNCHANGED = "nothing was changed: the stack's files are as they were and no half-written file was left."


def write_stack(stack_dir: Path, files: Mapping[str, str], backup: str | None = None) -> list[str]:
    """Write ``files`` all-or-nothing; private files are 0600 from the start. Returns the names that changed.

    ``backup`` names a file edited by hand (overwritten under --force) to keep as NAME.bak-TIME first.
    """
    data = encode_files(files)  # before anything is written: a file that cannot be encoded stops here
    try:
        stack_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if diskspace.is_full(exc):
            raise diskspace.full_error(stack_dir, "the stack folder was not created.") from None
        raise StackDirError(
            f"cannot create the stack folder {stack_dir}: {exc.strerror}.", "Choose another --dir."
        ) from None
    changed = [n for n, b in data.items() if _kind(stack_dir / n) != "file" or _read_bytes(stack_dir / n) != b]
    env = stack_dir / ENV_FILE
    if not changed:
        if _kind(env) == "file":
            env.chmod(0o600)
        return []
    try:
        partial = Path(tempfile.mkdtemp(prefix=STAGING_PARTIAL, dir=stack_dir))
    except OSError as exc:
        if diskspace.is_full(exc):
            raise diskspace.full_error(stack_dir, _UNCHANGED) from None
        raise StackDirError(f"cannot write into {stack_dir}: {exc.strerror}.", "Choose another --dir.") from None
    kept: Path | None = None
    try:
        for name in changed:
            private = name in PRIVATE_FILES
            (partial / name).parent.mkdir(exist_ok=True)  # one level: "presets/models.ini"
            fd = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data[name])
                fh.flush()
                os.fsync(fh.fileno())
            if not private:
                (partial / name).chmod(0o644)  # whatever the umask
        _fsync_dir(partial)
        if backup is not None and _kind(stack_dir / backup) == "file":
            kept = stack_dir / f"{backup}.bak-{time.strftime('%Y%m%dT%H%M%S')}"
            shutil.copy2(stack_dir / backup, kept)
        partial.rename(stack_dir / STAGING)  # from here on the new stack is the one that counts
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if kept is not None:
            kept.unlink(missing_ok=True)  # a copy cut short by a full disk is no copy
        if diskspace.is_full(exc):
            raise diskspace.full_error(stack_dir, _UNCHANGED) from None
        if isinstance(exc, OSError):
            raise StackDirError(
                f"cannot write the stack into {stack_dir}: {exc.strerror}; nothing was changed.",
                "Free some space or check the folder's permissions.",
            ) from None
        raise
    _finish_staging(stack_dir)
    with contextlib.suppress(OSError):
        env.chmod(0o600)
    return changed
