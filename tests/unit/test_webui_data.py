"""Open WebUI's database revision against an image, without an engine: the probe script run by this
machine's Python on a package laid out as Open WebUI's, real SQLite files (one with its revision still in
the write-ahead log), and the refusals `upgrade` and `restore` make from what the probe says. The real
images and the real 0.11.4 → 0.12.4 data are tests/e2e/test_upgrade_versions.py."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deploykit.running import backup, webui_data
from deploykit.seams import engine
from deploykit.seams.engine import EngineAddress
from deploykit.values.errors import UsageError
from tests.unit.test_data_safety import MANIFEST, write_backup


def fake_open_webui(root: Path) -> Path:
    """A package named open_webui with migrations as Open WebUI writes them (both spellings of revision)."""
    versions = root / "open_webui" / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "open_webui" / "__init__.py").write_text("raise SystemExit('the probe must not import Open WebUI')\n")
    (versions / "7e5b5dc7342b_init.py").write_text('revision = "7e5b5dc7342b"\ndown_revision = None\n')
    (versions / "ca81bd47c050_add_config.py").write_text(
        "from typing import Union\n\nrevision: str = 'ca81bd47c050'\ndown_revision: Union[str, None] = '7e5b5dc7342b'\n"
    )
    (versions / "notes.txt").write_text("revision = 'not-a-migration'\n")
    return root


def database(path: Path, revision: str, *, keep_in_wal: bool = False) -> sqlite3.Connection:
    """An SQLite file whose alembic_version says ``revision``; with ``keep_in_wal`` the row is only in the
    -wal file (the connection, returned, stays open so nothing is checkpointed)."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    con.commit()
    if keep_in_wal:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    con.commit()
    return con


def test_the_probe_reads_an_images_revisions_and_the_datas_without_importing_open_webui(tmp_path: Path) -> None:
    root = fake_open_webui(tmp_path / "site")
    data = tmp_path / "data"
    data.mkdir()
    database(data / "webui.db", "ca81bd47c050").close()
    out = subprocess.run(
        [sys.executable, "-c", webui_data._PROBE, str(data / "webui.db"), str(data)],
        capture_output=True, text=True, cwd=root, check=False,
    )  # fmt: skip
    found = webui_data._parse("open-webui:x", out.returncode, out.stdout)
    assert found.known == {"7e5b5dc7342b", "ca81bd47c050"}
    assert found.data == ("ca81bd47c050",)
    assert found.free_bytes and found.free_files
    assert found.unknown(found.data) == ()
    assert found.unknown(("0bd252b206fb",)) == ("0bd252b206fb",)


def test_an_image_without_open_webui_or_python_refuses_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", webui_data._PROBE], capture_output=True, text=True, cwd=tmp_path)
    found = webui_data._parse("alpine", out.returncode, out.stdout)
    assert found.known is None and found.unknown(("anything",)) == ()
    assert webui_data._parse("alpine", 127, "sh: python3: not found").known is None


def archive_of(tmp_path: Path, data: Path) -> Path:
    """A backup (manifest member first, the data under data/) of the folder ``data``."""
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        body = json.dumps({"project": "p"}).encode()
        info = tarfile.TarInfo(backup.MANIFEST_MEMBER)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        tar.add(data, arcname="data")
    return path


def test_a_backups_revision_is_read_with_its_write_ahead_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    con = database(data / "webui.db", "0bd252b206fb", keep_in_wal=True)
    try:
        assert (data / "webui.db-wal").stat().st_size > 0
        members = 2 + len(list(data.iterdir()))  # the manifest, data/, the database, its -wal and -shm
        scan = webui_data.scan_archive(archive_of(tmp_path, data))
    finally:
        con.close()
    assert scan.revisions == ("0bd252b206fb",)  # only in the log: without it the table reads empty
    assert scan.files == members
    assert scan.disk_bytes % webui_data.BLOCK == 0 and scan.disk_bytes >= (data / "webui.db").stat().st_size


def test_a_backup_cut_short_is_counted_as_far_as_it_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database(data / "webui.db", "abc").close()
    path = archive_of(tmp_path, data)
    path.write_bytes(path.read_bytes()[:-40])
    scan = webui_data.scan_archive(path)
    assert scan.revisions is None  # the unpack reports the damage, as it did before the scan existed


def write_sidecar_backup(folder: Path, name: str, image: str) -> Path:
    archive = folder / f"{name}.tar.gz"
    archive.write_bytes(b"")
    (folder / f"{name}.json").write_text(json.dumps({"image": image}))
    return archive


def test_upgrade_to_an_image_older_than_the_data_names_the_backup_made_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    write_sidecar_backup(backups, "s-20261201T000000Z", "open-webui:0.11.4")
    newest = write_sidecar_backup(backups, "s-20261202T000000Z", "open-webui:0.11.4")
    write_sidecar_backup(backups, "s-20261203T000000Z", "open-webui:0.12.4")
    (backups / "s-20261204T000000Z.json").write_text("[not json")
    older = webui_data.Probe("open-webui:0.11.4", frozenset({"a", "b"}), ("c",))
    monkeypatch.setattr(webui_data, "probe", lambda *a: older)
    with pytest.raises(UsageError) as caught:
        webui_data.check_upgrade(EngineAddress(), tmp_path, "s", "open-webui:0.11.4", "s_open-webui-data", backups)
    assert "is at Open WebUI database revision c, which open-webui:0.11.4 does not know" in caught.value.message
    assert (caught.value.hint or "").startswith("Nothing was changed. To go back to open-webui:0.11.4")
    assert f"--image open-webui=open-webui:0.11.4 --restore {newest}`" in (caught.value.hint or "")

    monkeypatch.setattr(webui_data, "probe", lambda *a: webui_data.Probe("x", frozenset({"c"}), ("c",)))
    webui_data.check_upgrade(EngineAddress(), tmp_path, "s", "x", "s_open-webui-data", backups)  # fits: no error


def test_restore_of_data_newer_than_the_image_is_refused_naming_the_image_that_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database(data / "webui.db", "0bd252b206fb").close()
    archive = write_backup(tmp_path, {"webui.db": (data / "webui.db").read_bytes()})
    monkeypatch.setattr(webui_data, "probe", lambda *a: webui_data.Probe(MANIFEST.image, frozenset({"d4c1"}), None))
    monkeypatch.setattr(engine, "run_on_volume", lambda *a, **k: pytest.fail("nothing may be unpacked"))
    es = SimpleNamespace(volume_name=lambda key: "v", containers=lambda: [])
    stack: Any = SimpleNamespace(
        dir=tmp_path,
        spec=SimpleNamespace(project=MANIFEST.project, images={"open-webui": "open-webui:old"}),
        secrets={"DEPLOYKIT_STACK_ID": MANIFEST.stack_id},
        engine_stack=lambda _: es,
    )
    with pytest.raises(UsageError) as caught:
        backup.restore(stack, EngineAddress(), archive)
    assert f"backup {archive.name} is at Open WebUI database revision 0bd252b206fb" in caught.value.message
    assert f"--image open-webui={MANIFEST.image} --restore {archive}`" in (caught.value.hint or "")


def test_the_probe_script_is_what_the_helper_runs() -> None:
    # The helper runs it through sh -c: quoting must hand python3 the script unchanged.
    script = f"python3 -c {webui_data.shlex.quote(webui_data._PROBE)} --version-check"
    out = subprocess.run(["sh", "-c", script.replace("python3", sys.executable, 1)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("DEPLOYKIT-PROBE "), out.stderr
