"""The only module that talks to the Docker Engine itself: its address, what it offers, images, volumes and
the short-lived helper containers; one stack's compose and swarm commands are ``deploykit.seams.compose``."""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deploykit.seams.proc import Runner, run_cmd
from deploykit.values.errors import EngineError
from deploykit.values.host import DockerEngine
from deploykit.values.redact import redact

TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclass(frozen=True)
class EngineTLS:
    """Client TLS material for a tcp:// engine, in Docker's DOCKER_CERT_PATH layout (ca.pem, cert.pem, key.pem);
    the engine's certificate is always verified against ca.pem."""

    cert_dir: Path

    def sdk_config(self) -> Any:
        import docker.tls

        d = self.cert_dir
        return docker.tls.TLSConfig(
            client_cert=(str(d / "cert.pem"), str(d / "key.pem")), ca_cert=str(d / "ca.pem"), verify=True
        )

    def env(self) -> dict[str, str]:
        """What the docker CLI (and so compose) reads for the same material."""
        return {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.cert_dir)}


@dataclass(frozen=True)
class EngineAddress:
    """Which Docker Engine, and how to reach it: its URL (``None``: the environment's DOCKER_HOST, else the
    local socket) and, for a tcp:// engine with TLS, the client material."""

    url: str | None = None
    tls: EngineTLS | None = None

    def __post_init__(self) -> None:
        if self.tls is not None and not self.url:
            raise ValueError("TLS material needs the engine's URL")

    @property
    def local(self) -> bool:
        """Whether the engine runs on this machine (its socket, or the environment's engine)."""
        return not self.url or self.url.startswith("unix://")

    @property
    def ssh(self) -> bool:
        return (self.url or "").startswith("ssh://")

    @property
    def hostname(self) -> str | None:
        """The machine named in the URL (None for a socket or the environment's engine)."""
        from urllib.parse import urlparse

        return urlparse(self.url).hostname if self.url else None

    @property
    def display(self) -> str:
        """Where the engine is, for messages: any password in the URL replaced by ***."""
        return redact(self.url or os.environ.get("DOCKER_HOST") or "the local socket (/var/run/docker.sock)")

    def compose_env(self) -> dict[str, str]:
        """The variables that point the docker CLI at this engine (none: the shell's own engine)."""
        if not self.url:
            return {}
        return {"DOCKER_HOST": self.url, **(self.tls.env() if self.tls else {})}

    def sdk_client(self, timeout: int = 10) -> Any:
        """An SDK client for this engine, not yet checked to answer."""
        import docker

        if not self.url:
            return docker.from_env(timeout=timeout)
        if self.tls is None:
            # ssh:// through the system ssh client, as compose's docker CLI does: one ~/.ssh/config, agent,
            # ProxyJump and known_hosts for both, rather than paramiko's partial reading of them.
            return docker.DockerClient(base_url=self.url, timeout=timeout, use_ssh_client=self.ssh)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the session's CA (psf/requests#3829), and
        # the SDK asks the engine its API version while it is built unless given one: build it with a version
        # (no request), stop requests reading the environment, ask the engine's unversioned /version, then
        # build the client kept with that answer, so the engine's own ca.pem is what verifies both.
        from docker.constants import DEFAULT_DOCKER_API_VERSION

        tls = self.tls.sdk_config()

        def made(version: str) -> Any:
            c = docker.DockerClient(base_url=self.url, timeout=timeout, tls=tls, version=version)
            c.api.trust_env = False
            return c

        asking = made(DEFAULT_DOCKER_API_VERSION)
        try:
            api_version = str(asking.version(api_version=False)["ApiVersion"])
        finally:
            asking.close()
        return made(api_version)


def compose_version(runner: Runner = run_cmd) -> str | None:
    """compose v2's version ("2.26.1"), or None when only v1 or nothing is installed."""
    if runner is run_cmd:
        # This machine's compose CLI, asked once per PATH: a fleet probes thousands of engines with the same one.
        return _local_compose_version(os.environ.get("PATH", ""))
    return _ask_compose_version(runner)


def _ask_compose_version(runner: Runner) -> str | None:
    result = runner(["docker", "compose", "version", "--short"])
    if not result.ok:
        return None
    return result.stdout.strip().lstrip("v") or None


@functools.lru_cache(maxsize=4)
def _local_compose_version(path: str) -> str | None:
    return _ask_compose_version(run_cmd)


def probe_engine(docker_host: EngineAddress, runner: Runner = run_cmd) -> DockerEngine:
    """Reachability, versions and GPU support of the engine; never raises."""
    compose = compose_version(runner)
    try:
        client = docker_host.sdk_client(timeout=5)
        info = client.info()
        version = client.version()
    except Exception as exc:  # the SDK raises many types for "not there"; all mean unreachable
        return DockerEngine(
            reachable=False,
            host=docker_host.display if docker_host.url else None,
            compose_version=compose,
            error=redact((str(exc).splitlines() or [type(exc).__name__])[0][:300]),
        )
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    cdi = tuple((info.get("DiscoveredDevices") and [d.get("ID", "") for d in info["DiscoveredDevices"]]) or ())
    return DockerEngine(
        reachable=True,
        host=docker_host.display if docker_host.url else None,
        server_version=version.get("Version"),
        api_version=version.get("ApiVersion"),
        compose_version=compose,
        runtimes=runtimes,
        nvidia_runtime="nvidia" in runtimes or any(d.startswith("nvidia.com/gpu") for d in cdi),
        cdi_devices=cdi,
        cpus=info.get("NCPU"),
    )


def engine_error(docker_host: EngineAddress, exc: Exception) -> EngineError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return EngineError(
        f"cannot connect to the Docker Engine at {docker_host.display}: {redact(detail)}.",
        "Is dockerd running? Start it (`systemctl start docker`, or `make provision` here) "
        "or point --docker-host / DOCKER_HOST at a running engine.",
    )


def client(docker_host: EngineAddress, timeout: int = 10) -> Any:
    """A connected SDK client, or an EngineError a person can act on."""
    try:
        c = docker_host.sdk_client(timeout)
        c.ping()
    except Exception as exc:
        raise engine_error(docker_host, exc) from None
    return c


def require_compose_v2(version: str | None, runner: Runner = run_cmd) -> str:
    """``version``, compose v2's as compose_version (or a probe) found it; when None, an error saying what is there."""
    if version is not None:
        return version
    v1 = runner(["docker-compose", "version", "--short"])
    hint = (
        "Install the compose v2 plugin (package docker-compose-plugin, or docker-compose 2.x in /usr/libexec/docker/"
        "cli-plugins/); `make provision` does it on Debian."
    )
    if v1.ok:
        raise EngineError(
            f"only docker-compose v1 ({v1.stdout.strip()}) is installed; deploykit needs compose v2.", hint
        )
    raise EngineError("docker compose v2 is not installed.", hint)


@dataclass(frozen=True)
class ProjectOwner:
    """A deploykit stack found in a compose project: where its containers were started, and its volumes."""

    working_dir: str | None
    volumes: tuple[str, ...]


def project_owners(docker_host: EngineAddress, project: str) -> dict[str, ProjectOwner]:
    """The stacks (by stack id) whose containers or volumes are in ``project``."""
    c = client(docker_host)
    label = f"com.docker.compose.project={project}"
    dirs: dict[str, str] = {}
    volumes: dict[str, list[str]] = {}
    for ctr in c.containers.list(all=True, filters={"label": label}):
        stack_id = ctr.labels.get("org.deploykit.stack-id")
        if stack_id:
            dirs[stack_id] = ctr.labels.get("com.docker.compose.project.working_dir", "an unknown directory")
    for vol in c.volumes.list(filters={"label": label}):
        stack_id = (vol.attrs.get("Labels") or {}).get("org.deploykit.stack-id")
        if stack_id:
            volumes.setdefault(stack_id, []).append(vol.name)
    return {sid: ProjectOwner(dirs.get(sid), tuple(volumes.get(sid, ()))) for sid in dirs.keys() | volumes.keys()}


def image_present(docker_host: EngineAddress, ref: str) -> bool:
    return _exists(lambda: client(docker_host).images.get(ref))


def _exists(lookup: Callable[[], object]) -> bool:
    """Whether the engine has the thing ``lookup`` gets (an image, a volume): False on its 404."""
    import docker.errors

    try:
        lookup()
    except docker.errors.NotFound:  # ImageNotFound is a NotFound
        return False
    return True


@dataclass(frozen=True)
class EngineResources:
    """What an engine's /info says about its machine: enough to plan without a shell on it."""

    name: str
    arch: str
    cpus: int
    memory_bytes: int


def engine_resources(docker_host: EngineAddress) -> EngineResources:
    info = client(docker_host).info()
    return EngineResources(
        name=str(info.get("Name", "")),
        arch=str(info.get("Architecture", "")),
        cpus=int(info.get("NCPU", 1)),
        memory_bytes=int(info.get("MemTotal", 0)),
    )


def run_probe(
    docker_host: EngineAddress,
    image: str,
    command: list[str],
    *,
    label: str,
    gpus: bool = False,
    volume: str | None = None,
) -> tuple[int, str]:
    """A short-lived container (no network; all GPUs when asked; ``volume`` read-only at /data): exit code
    and output. Always removed."""
    import docker.types

    c = client(docker_host, timeout=120)
    requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None
    ctr = c.containers.create(
        image, entrypoint=command[:1], command=command[1:], network_mode="none", device_requests=requests,
        volumes={volume: {"bind": "/data", "mode": "ro"}} if volume else None,
        labels={"org.deploykit.managed": "true", "org.deploykit.stack": label},
    )  # fmt: skip
    try:
        ctr.start()
        code = int(ctr.wait(timeout=120).get("StatusCode", 1))
        return code, ctr.logs(stdout=True, stderr=code != 0).decode("utf-8", "replace")
    finally:
        ctr.remove(force=True)


def copy_image(source_host: EngineAddress, target_host: EngineAddress, ref: str) -> str:
    """Stream ``ref`` from one engine into another (docker save | docker load), unless the same id is there."""
    import docker.errors

    source = client(source_host, timeout=600)
    target = client(target_host, timeout=600)
    try:
        local_id = source.images.get(ref).id
    except docker.errors.ImageNotFound:
        return "not on the controller's engine: the host will pull it"
    try:
        if target.images.get(ref).id == local_id:
            return "already there"
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    # get_image by name keeps the tag in the archive (an id-only save loads untagged).
    for chunk in target.api.load_image(source.api.get_image(ref, chunk_size=1 << 20)):
        if isinstance(chunk, dict) and chunk.get("error"):
            raise EngineError(
                f"loading {ref} into {target_host.display} failed: {chunk['error']}", "See `docker info` there."
            )
    size = int(source.images.get(ref).attrs.get("Size", 0))
    return f"loaded ({size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s)"


def volume_exists(docker_host: EngineAddress, name: str) -> bool:
    return _exists(lambda: client(docker_host).volumes.get(name))


def fill_volume(
    docker_host: EngineAddress,
    volume: str,
    image: str,
    archive: Iterator[bytes],
    check: list[str],
    labels: dict[str, str],
) -> tuple[int, str]:
    """Create ``volume``, extract ``archive`` (a tar stream) into it through a stopped container made from
    ``image``, then run ``check`` in that container (mounted at /data); its exit code and output."""
    c = client(docker_host, timeout=1800)
    if not volume_exists(docker_host, volume):
        c.volumes.create(volume, labels=labels)
    ctr = c.containers.create(
        image, entrypoint=check[:1], command=check[1:], network_mode="none",
        volumes={volume: {"bind": "/data", "mode": "rw"}}, labels=labels,
    )  # fmt: skip
    try:
        # The engine extracts the archive itself, into the volume on ITS disk: no tar needed in the image.
        if not ctr.put_archive("/data", archive):
            raise EngineError(f"the engine at {docker_host.display} refused the model archive for {volume}.")
        ctr.start()
        code = int(ctr.wait(timeout=1800).get("StatusCode", 1))
        return code, ctr.logs().decode("utf-8", "replace")
    finally:
        ctr.remove(force=True)


def engine_cpus(docker_host: EngineAddress) -> int:
    """CPUs of the machine the engine runs on (the one the server's threads share), as the engine reports."""
    try:
        return int(client(docker_host).info().get("NCPU") or os.cpu_count() or 1)
    except EngineError:
        return os.cpu_count() or 1


VOLUME_MOUNT = "/data"


def _helper(
    docker_host: EngineAddress,
    image: str,
    volume: str,
    labels: dict[str, str],
    read_only: bool,
    command: list[str] | None = None,
) -> Any:
    """A short-lived container of a local image with ``volume`` at /data; never pulls, has no network."""
    import docker.errors

    c = client(docker_host)
    try:
        c.images.get(image)
    except docker.errors.ImageNotFound:
        raise EngineError(
            f"image {image} is not on this engine, and a backup helper needs it.",
            "It is the stack's Open WebUI image: run `deploykit up` once, or pull it.",
        ) from None
    return c.containers.create(
        image,
        entrypoint=["sh", "-c"] if command else ["true"],
        command=command,
        name=f"{labels.get('org.deploykit.stack', 'deploykit')}-data-helper-{secrets.token_hex(3)}",
        labels=labels | {"org.deploykit.helper": "volume-data"},
        volumes={volume: {"bind": VOLUME_MOUNT, "mode": "ro" if read_only else "rw"}},
        network_mode="none",
        user="0",
    )


def export_volume(docker_host: EngineAddress, volume: str, image: str, labels: dict[str, str], sink: Any) -> None:
    """Stream the volume's files as an uncompressed tar (members under ``data/``) into ``sink(chunk)``.

    The helper container is created, never started: the engine reads the mounted volume for the copy.
    """
    helper = _helper(docker_host, image, volume, labels, read_only=True)
    try:
        chunks, _ = helper.get_archive(VOLUME_MOUNT)
        refused: OSError | None = None
        for chunk in chunks:
            if refused is None:
                try:
                    sink(chunk)
                except OSError as exc:  # a full disk: read on, the engine holds the helper until the copy ends
                    refused = exc
        if refused is not None:
            raise refused
    finally:
        helper.remove(force=True)


def run_on_volume(
    docker_host: EngineAddress,
    volume: str,
    image: str,
    labels: dict[str, str],
    script: str,
    upload: tuple[str, Iterable[bytes]] | None = None,
    timeout: float = 900,
) -> tuple[int, str]:
    """Run ``sh -c script`` in a helper with ``volume`` at /data (read-write); returns (exit code, output).

    ``upload`` is (directory in the helper, an uncompressed tar stream) copied in before it starts.
    """
    helper = _helper(docker_host, image, volume, labels, read_only=False, command=[script])
    try:
        if upload is not None:
            directory, stream = upload
            helper.put_archive(directory, stream)
        helper.start()
        result = helper.wait(timeout=timeout)
        output = helper.logs().decode("utf-8", "replace")
        return int(result.get("StatusCode", 1)), output
    finally:
        helper.remove(force=True)


def tar_of_file(name: str, source: IO[bytes], size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """An uncompressed tar stream holding one regular file, read from ``source`` as it is sent."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    while sent < size:
        block = source.read(min(chunk, size - sent))
        if not block:
            raise OSError(f"{name} ended after {sent} of {size} bytes")
        sent += len(block)
        yield block
    yield b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024


def pull_image(docker_host: EngineAddress, ref: str) -> None:
    repository, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "")
    try:
        client(docker_host).images.pull(repository or ref, tag=tag or None)
    except Exception as exc:
        raise EngineError(
            f"image {ref} is not on this engine and could not be pulled: {str(exc).splitlines()[0][:200]}.",
            "Nothing was changed. Load the image (`docker load`) or use --image SERVICE=REF with a local one.",
        ) from None


# ---------------------------------------------------------------- files for a service (the HTTPS proxy)


@contextmanager
def _helper_errors(docker_host: EngineAddress, what: str) -> Iterator[None]:
    """The engine refusing a helper container (no such image, no space …) is said in one sentence."""
    import docker.errors

    try:
        yield
    except docker.errors.DockerException as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise EngineError(f"the engine at {docker_host.display} refused {what}: {redact(detail)}.") from None


def run_with_files(
    docker_host: EngineAddress,
    image: str,
    command: list[str],
    archive: bytes,
    *,
    user: str,
    env: dict[str, str],
    labels: dict[str, str],
    timeout: float = 60,
) -> tuple[int, str]:
    """A short-lived container of ``image`` (no network) with ``archive`` (a tar) unpacked at / before ``command``
    runs as ``user``: its exit code and output. Always removed."""
    c = client(docker_host, timeout=int(timeout) + 30)
    with _helper_errors(docker_host, f"a check in {image}"):
        ctr = c.containers.create(
            image, entrypoint=command[:1], command=command[1:], network_mode="none", user=user, environment=env,
            labels=labels | {"org.deploykit.helper": "check-files"},
        )  # fmt: skip
        try:
            if not ctr.put_archive("/", archive):
                raise EngineError(f"the engine at {docker_host.display} refused the files for {image}.")
            ctr.start()
            code = int(ctr.wait(timeout=timeout).get("StatusCode", 1))
            return code, ctr.logs().decode("utf-8", "replace")
        finally:
            ctr.remove(force=True)


def put_files_in_volume(
    docker_host: EngineAddress, volume: str, image: str, mount: str, archive: bytes, labels: dict[str, str]
) -> None:
    """Unpack ``archive`` (a tar, with owners and modes) into ``volume`` through a container of ``image`` that
    mounts it at ``mount`` and is created, never started: the engine writes the files on its own disk."""
    c = client(docker_host, timeout=60)
    with _helper_errors(docker_host, f"the files for volume {volume}"):
        ctr = c.containers.create(
            image, entrypoint=["true"], network_mode="none", volumes={volume: {"bind": mount, "mode": "rw"}},
            labels=labels | {"org.deploykit.helper": "volume-files"},
        )  # fmt: skip
        try:
            if not ctr.put_archive(mount, archive):
                raise EngineError(f"the engine at {docker_host.display} refused the files for volume {volume}.")
        finally:
            ctr.remove(force=True)
