"""The weights, sent to a remote engine: a remote engine resolves bind mounts on its own disk, not the controller's,
so the model travels as a named volume filled through the engine API and checked by SHA-256 there."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploykit.seams.engine import EngineAddress
from deploykit.seams.textfile import sha256_of


@dataclass(frozen=True)
class ModelPayload:
    """The weights as they travel: a manifest in sha256sum format and the digest that names the volume."""

    path: Path
    digest: str
    sums: str

    @property
    def volume(self) -> str:
        return f"deploykit-model-{self.digest[:16]}"

    def check_command(self) -> list[str]:
        """Run in the fill container: verify every file on the host's disk, then mark the volume done."""
        return ["sh", "-c", f"cd /data && sha256sum -c --quiet SHA256SUMS && echo {self.digest} > .deploykit-verified"]

    @staticmethod
    def marker_command() -> list[str]:
        return ["sh", "-c", "cat /data/.deploykit-verified 2>/dev/null || true"]


def model_payload(path: Path) -> ModelPayload:
    """A GGUF file is named by its own SHA-256; a model directory by that of its SHA256SUMS manifest."""
    if path.is_file():
        digest = sha256_of(path)
        return ModelPayload(path, digest, f"{digest}  {path.name}\n")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    sums = "".join(f"{sha256_of(p)}  {p.relative_to(path).as_posix()}\n" for p in files)
    return ModelPayload(path, hashlib.sha256(sums.encode()).hexdigest(), sums)


def archive_stream(payload: ModelPayload, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A tar of the weights and SHA256SUMS, produced while it is sent (no copy on the controller's disk)."""
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
                root = payload.path
                members = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
                for member in members:
                    name = member.name if root.is_file() else member.relative_to(root).as_posix()
                    info = tar.gettarinfo(str(member), arcname=name)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with member.open("rb") as fh:
                        tar.addfile(info, fh)
                sums = payload.sums.encode()
                info = tarfile.TarInfo("SHA256SUMS")
                info.size, info.mode = len(sums), 0o644
                tar.addfile(info, io.BytesIO(sums))
        except BaseException as exc:  # reported by the reader below
            errors.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as source:
        yield from iter(lambda: source.read(chunk), b"")
    writer.join()
    if errors:
        raise errors[0]


class PayloadCache:
    """Hashes each model path once per run, whichever thread asks first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[Path, ModelPayload] = {}

    def get(self, path: Path) -> ModelPayload:
        with self._lock:
            if path not in self._done:
                self._done[path] = model_payload(path)
            return self._done[path]


def deliver_model(docker_host: EngineAddress, payload: ModelPayload, image: str) -> str:
    """The weights into the host's named volume through its engine, checked by SHA-256 on the host's disk;
    nothing sent when the volume already holds that digest."""
    from deploykit.seams import engine
    from deploykit.values.errors import DownloadError

    volume = payload.volume
    label = "deploykit-model-delivery"
    if engine.volume_exists(docker_host, volume):
        _, marker = engine.run_probe(docker_host, image, payload.marker_command(), label=label, volume=volume)
        if marker.strip() == payload.digest:
            return f"already in volume {volume}"
    labels = {
        "org.deploykit.managed": "true",
        "org.deploykit.model-sha256": payload.digest,
        "org.deploykit.stack": label,
    }
    started = time.monotonic()
    code, out = engine.fill_volume(docker_host, volume, image, archive_stream(payload), payload.check_command(), labels)
    if code != 0:
        raise DownloadError(
            f"the model sent into volume {volume} failed its SHA-256 check on the host: {out.strip()[:200]}.",
            "Run `deploykit fleet up` again to resend it; check the host's disk if it fails again.",
        )
    return f"sent into volume {volume} and SHA-256 checked there ({time.monotonic() - started:.1f} s)"
