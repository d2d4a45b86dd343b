"""A fleet's inventory: its workstations, their groups and the site's customisation per layer, validated.

Each workstation keeps its own Docker Engine; deploykit reaches it through that engine (``ssh://``, ``tcp://``,
``unix://`` or a docker context). A TOML or schema error names the line it is on."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from deploykit.backends import named
from deploykit.seams.engine import TLS_FILES, EngineAddress, EngineTLS
from deploykit.values.errors import ConfigError, EngineError, NotFoundError, UsageError
from deploykit.values.redact import redact
from deploykit.values.stackplan import MAX_MODELS, ModelChoice
from deploykit.values.webui_env import WebuiEnv

HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class SiteLayer(BaseModel):
    """A site's customisation, fleet-wide, per group or per host: the nearer layer wins, [webui_env] merges.

    Paths are on the controller; relative ones are read from the inventory's folder."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    webui_env: WebuiEnv = {}
    templates_dir: str | None = None
    override: str | None = Field(None, description="a compose.override.yaml copied into the host's stack folder")
    # A tcp:// engine's client TLS material, as DOCKER_CERT_PATH: a folder of ca.pem, cert.pem, key.pem.
    tls_dir: str | None = None
    # false: reach a tcp:// engine without TLS (an open engine port is root on that machine: opt in only).
    tls: bool | None = None
    # The stack's models ([[hosts.models]], [[groups.NAME.models]], top-level [[models]]): the nearest list wins
    # whole, as a stack's deploykit.toml gives them; none: the controller's --model.
    models: list[ModelChoice] | None = Field(None, max_length=MAX_MODELS)


class FleetHost(SiteLayer):
    """One workstation of the inventory; loaded, it carries its effective customisation (absolute paths)."""

    # Where the override was named ("lab.toml line 9"): a missing file is reported against that line.
    _override_from: str | None = PrivateAttr(None)
    _tls_from: str | None = PrivateAttr(None)

    name: str = Field(pattern=HOST_NAME)
    engine: str | None = Field(None, description="ssh://user@host[:port], tcp://host:port or unix:///path")
    context: str | None = Field(None, description="a docker context name (instead of engine)")
    profile: str | None = None
    labels: dict[str, str] = {}
    ui_port: int = Field(7860, ge=1, le=65535)
    inference_port: int = Field(7861, ge=1, le=65535)
    # Where this controller reaches the published ports; default: the engine URL's host name.
    address: str | None = None
    group: str | None = None

    def site_override(self) -> Path | None:
        """The override file the inventory names for this host, checked to exist and to be YAML."""
        if self.override is None:
            return None
        path = Path(self.override)
        if not path.is_file():
            raise NotFoundError(
                f"{self._override_from or 'the inventory'} names override {path} for {self.name}, "
                "which is not a file on this controller.",
                "Fix the path; a relative one is read from the inventory's folder.",
            )
        from deploykit.seams.override import check_syntax

        check_syntax(path)
        return path

    @model_validator(mode="after")
    def _one_engine(self) -> FleetHost:
        if (self.engine is None) == (self.context is None):
            raise ValueError("give exactly one of engine (a URL) or context (a docker context name)")
        if self.engine is not None:
            scheme = urlparse(self.engine).scheme
            if scheme not in ("ssh", "tcp", "unix"):
                raise ValueError(f"engine '{redact(self.engine)}' is not ssh://, tcp:// or unix://")
        if self.ui_port == self.inference_port:
            raise ValueError("ui_port and inference_port must differ")
        return self


class Inventory(SiteLayer):
    """The hosts, with fleet-wide customisation at the top and named groups of it under [groups.NAME]."""

    hosts: list[FleetHost] = Field(min_length=1)
    groups: dict[str, SiteLayer] = {}

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        seen: set[str] = set()
        for host in self.hosts:
            if host.name in seen:
                raise ValueError(f"host name '{host.name}' appears twice")
            seen.add(host.name)
        return self


def load_inventory(path: Path) -> Inventory:
    """The inventory file, checked: a TOML or schema error names the line it is on."""
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_toml

    hint = "Check the --inventory path; it is a TOML file in UTF-8."
    text = read_text(path, "inventory", hint, UsageError, missing=NotFoundError)
    hint = (
        "Each [[hosts]] table takes name, engine or context, profile, labels, ui_port, inference_port, address, "
        "group, webui_env, templates_dir, override, tls_dir, tls, [[hosts.models]]; the top level and [groups.NAME] "
        "take the last six."
    )
    data = load_toml(text, path, "inventory", hint, UsageError)
    lines = TomlLines(text)
    try:
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        problems = [_located(lines, err["loc"], err["msg"]) for err in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(problems) + ".", hint) from None
    _check_layers(inventory, path, lines)
    base = path.expanduser().absolute().parent
    hosts = [_effective(inventory, i, base, path, lines) for i in range(len(inventory.hosts))]
    return inventory.model_copy(update={"hosts": hosts})


def _layers(inventory: Inventory, index: int) -> list[tuple[tuple[str | int, ...], SiteLayer]]:
    """Fleet-wide, the host's group, the host: each with where it sits in the file."""
    host = inventory.hosts[index]
    layers: list[tuple[tuple[str | int, ...], SiteLayer]] = [((), inventory)]
    if host.group is not None:
        layers.append((("groups", host.group), inventory.groups[host.group]))
    layers.append((("hosts", index), host))
    return layers


def _check_layers(inventory: Inventory, path: Path, lines: TomlLines) -> None:
    """Every host's group exists and every [webui_env] name is one Open WebUI can take."""
    from deploykit.values import webui_env

    for i, host in enumerate(inventory.hosts):
        if host.group is not None and host.group not in inventory.groups:
            known = ", ".join(sorted(inventory.groups)) or "none"
            raise ConfigError(
                f"{path}: {_located(lines, ('hosts', i, 'group'), f'no [groups.{host.group}] table')}.",
                f"Groups defined: {known}.",
            )
    tables: list[tuple[tuple[str | int, ...], SiteLayer]] = [((), inventory)]
    tables += [(("groups", name), group) for name, group in inventory.groups.items()]
    tables += [(("hosts", i), host) for i, host in enumerate(inventory.hosts)]
    for loc, layer in tables:
        try:
            webui_env.check(layer.webui_env)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {_located(lines, (*loc, 'webui_env'), exc.message)}", exc.hint) from None
        for i, choice in enumerate(layer.models or ()):
            if choice.id is None and choice.file is None:
                where = _located(lines, (*loc, "models", i), "names neither an id nor a file")
                raise ConfigError(f"{path}: {where}.", "Give each [[models]] entry an id, a file, or both.")
            if (wanted := choice.backend) is not None:
                try:
                    named(wanted)
                except ValueError as exc:
                    where = _located(lines, (*loc, "models", i, "backend"), str(exc))
                    raise ConfigError(f"{path}: {where}.", "Leave backend out to let the planner choose.") from None


def _effective(inventory: Inventory, index: int, base: Path, path: Path, lines: TomlLines) -> FleetHost:
    """The host with its layers folded in: [webui_env] merged, the nearest templates_dir and override, as
    absolute paths; the override remembers the line that named it."""
    env: dict[str, str] = {}
    templates_dir = override = override_from = tls_dir = tls_from = None
    tls: bool | None = None
    models: list[ModelChoice] | None = None
    for loc, layer in _layers(inventory, index):
        env |= layer.webui_env
        if layer.models is not None:
            models = layer.models
        if layer.tls_dir is not None:
            tls_dir = str(base / Path(layer.tls_dir).expanduser())
            line = _line_of(lines, (*loc, "tls_dir"))
            tls_from = f"{path} line {line}" if line else str(path)
        if layer.tls is not None:
            tls = layer.tls
        if layer.templates_dir is not None:
            templates_dir = str(base / Path(layer.templates_dir).expanduser())
        if layer.override is not None:
            override = str(base / Path(layer.override).expanduser())
            line = _line_of(lines, (*loc, "override"))
            override_from = f"{path} line {line}" if line else str(path)
    host = inventory.hosts[index].model_copy(
        update={
            "webui_env": env,
            "templates_dir": templates_dir,
            "override": override,
            "tls_dir": tls_dir,
            "tls": tls,
            "models": models,
        }
    )
    host._override_from = override_from
    host._tls_from = tls_from
    return host


def _located(lines: TomlLines, loc: Sequence[str | int], msg: str) -> str:
    """'line N: hosts[1].key: message' — the line of the key in the index-th [[hosts]] table, when found."""
    where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    line = _line_of(lines, loc)
    return f"line {line}: {where}: {msg}" if line else f"{where}: {msg}"


_HEADER = re.compile(r"\s*\[")
_HOSTS_HEADER = re.compile(r"\s*\[\[\s*hosts\s*\]\]")
_GROUP_HEADER = re.compile(r'\s*\[\s*groups\s*\.\s*(?:([A-Za-z0-9_-]+)|"([^"\\]*)")\s*\]')
_TABLE_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


class TomlLines:
    """Where the inventory's table headers and keys are, indexed in one pass over the text: a fleet of
    thousands of hosts asks for a line per host, and rescanning the file for each made loading quadratic."""

    def __init__(self, text: str) -> None:
        self.hosts: list[int] = []  # the 0-based line of each [[hosts]] header, in order
        self.groups: dict[str, int] = {}  # [groups.NAME] -> its first header line
        self.tables: dict[str, int] = {}  # a top-level [NAME] -> its first header line
        self.keys: dict[int, dict[str, int]] = {}  # a table's header line (-1: the top level) -> key -> first line
        table = -1
        for i, line in enumerate(text.splitlines()):
            if not _HEADER.match(line):
                if key := _KEY.match(line):
                    self.keys.setdefault(table, {}).setdefault(key.group(1), i)
                continue
            table = i
            if _HOSTS_HEADER.match(line):
                self.hosts.append(i)
            elif group := _GROUP_HEADER.match(line):
                self.groups.setdefault(group.group(1) or group.group(2), i)
            elif top := _TABLE_HEADER.match(line):
                self.tables.setdefault(top.group(1), i)


def _line_of(lines: TomlLines, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of ``loc``'s key: top level, in the index-th [[hosts]] or in [groups.NAME]."""
    if len(loc) >= 2 and loc[0] == "hosts" and isinstance(loc[1], int):
        if loc[1] >= len(lines.hosts):
            return None
        return _key_line(lines, lines.hosts[loc[1]], loc[2] if len(loc) > 2 else None)
    if len(loc) >= 2 and loc[0] == "groups":
        start = lines.groups.get(str(loc[1]))
        return _key_line(lines, start, loc[2] if len(loc) > 2 else None) if start is not None else None
    if loc and isinstance(loc[0], str):
        # A top-level key, or a top-level table such as [webui_env].
        table = lines.tables.get(loc[0])
        return table + 1 if table is not None else _key_line(lines, -1, loc[0])
    return None


def _key_line(lines: TomlLines, start: int, key: str | int | None) -> int | None:
    """The line of ``key =`` in the table whose header is line ``start`` (-1: the top level before any table);
    the header's own line when the key is not written there."""
    if isinstance(key, str) and (found := lines.keys.get(start, {}).get(key)) is not None:
        return found + 1
    return start + 1 if start >= 0 else None


def select_hosts(inventory: Inventory, patterns: str | None) -> tuple[FleetHost, ...]:
    """Hosts whose name matches one of the comma-separated glob patterns (all without patterns)."""
    if not patterns:
        return tuple(inventory.hosts)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = tuple(h for h in inventory.hosts if any(fnmatch.fnmatchcase(h.name, p) for p in wanted))
    if not chosen:
        names = ", ".join(h.name for h in inventory.hosts)
        raise NotFoundError(f"--hosts '{patterns}' matches no host of the inventory.", f"Hosts are: {names}.")
    return chosen


def check_tls(host: FleetHost) -> None:
    """A tcp:// engine is reached with readable TLS material, or without TLS only when the inventory says
    ``tls = false``; otherwise a ConfigError naming the host (and the file), before anything is written."""
    if host.engine is None or urlparse(host.engine).scheme != "tcp":
        return
    if host.tls is False:
        return
    if host.tls_dir is None:
        said = "says tls = true but names no tls_dir" if host.tls else "is tcp:// without TLS"
        raise ConfigError(
            f"host {host.name}: engine {redact(host.engine)} {said}, and an engine port without TLS "
            "gives root on that machine to anyone who reaches it.",
            "Give tls_dir (a folder with ca.pem, cert.pem, key.pem, as DOCKER_CERT_PATH) for the host or "
            "fleet-wide, or set tls = false for it to accept an unauthenticated engine.",
        )
    from deploykit.seams.textfile import read_bytes

    where = f" (tls_dir from {host._tls_from})" if host._tls_from else ""
    hint = (
        "tls_dir must hold ca.pem, cert.pem and key.pem (Docker's DOCKER_CERT_PATH layout); "
        "a relative one is read from the inventory's folder."
    )
    for name in TLS_FILES:
        # Read here, as regular files of PEM size: the SDK would block on a named pipe in their place.
        try:
            read_bytes(Path(host.tls_dir) / name, "TLS file", hint, ConfigError, limit=1024 * 1024)
        except ConfigError as exc:
            raise ConfigError(f"host {host.name}: {exc.message.removesuffix('.')}{where}.", hint) from None


def _context_tls(name: str) -> Path | None:
    """A TLS docker context's material, where the docker CLI keeps it (TLSPath/docker: ca, cert, key .pem)."""
    from docker.context.config import get_tls_dir

    folder = Path(get_tls_dir(name, "docker"))
    return folder if folder.is_dir() else None


def engine_address(host: FleetHost) -> EngineAddress:
    """The host's engine: its URL with its TLS material; a docker context is read from the docker CLI's
    context store."""
    if host.engine is not None:
        check_tls(host)
        tcp_tls = urlparse(host.engine).scheme == "tcp" and host.tls is not False and host.tls_dir is not None
        return EngineAddress(host.engine, EngineTLS(Path(str(host.tls_dir))) if tcp_tls else None)
    from docker.context import ContextAPI

    try:
        ctx = ContextAPI.get_context(host.context)
    except Exception as exc:  # the SDK raises its own errors for a malformed store
        raise EngineError(
            f"docker context '{host.context}' cannot be read: {exc}.", "See `docker context ls`."
        ) from None
    if ctx is None:
        raise NotFoundError(f"docker context '{host.context}' does not exist.", "See `docker context ls`.")
    if ctx.TLSConfig:
        folder = _context_tls(str(host.context))
        if folder is None:
            raise NotFoundError(
                f"docker context '{host.context}' uses TLS, but its material is not in the context store.",
                "See `docker context inspect` (Storage.TLSPath).",
            )
        return EngineAddress(str(ctx.Host), EngineTLS(folder))
    return EngineAddress(str(ctx.Host))


def address_of(host: FleetHost, docker_host: EngineAddress) -> str:
    """Where this controller reaches the host's published ports."""
    return host.address or docker_host.hostname or "127.0.0.1"
