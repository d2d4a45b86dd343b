"""Chromium in a network namespace of its own, reaching the host's loopback ports through unix sockets.

On a shared engine, other stacks' containers add and remove veth interfaces all the time; Chromium watches
the host's interfaces (netlink) and aborts every request in flight on each change (net::ERR_NETWORK_CHANGED),
even to 127.0.0.1. In a new network namespace it sees only its own loopback, so nothing changes under it.
The bytes are passed on unchanged (TLS runs end to end from Chromium to the stack's proxy): a forwarder in
the namespace listens on 127.0.0.1:PORT and hands each connection over a unix socket (sockets on the file
system cross network namespaces) to one in this process, which connects to the host's 127.0.0.1:PORT.

``isolated_chromium(folder, ports)`` writes the launcher to give Playwright as ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

# Run inside the namespace: bring loopback up, forward each port to its unix socket, then become Chromium.
FORWARDER = r"""
import os, socket, subprocess, sys, threading, time
folder, ports, chromium = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], sys.argv[3]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
listeners = []
for port in ports:
    s = socket.create_server(("127.0.0.1", port))
    listeners.append((s, os.path.join(folder, f"{port}.sock")))
if os.fork():
    os.execv(chromium, [chromium, *sys.argv[5:]])  # the parent becomes Chromium (Playwright's pipes stay)
parent = os.getppid()
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(listener, path):
    while True:
        conn, _ = listener.accept()
        out = socket.socket(socket.AF_UNIX)
        out.connect(path)
        threading.Thread(target=pump, args=(conn, out), daemon=True).start()
        threading.Thread(target=pump, args=(out, conn), daemon=True).start()
for listener, path in listeners:
    threading.Thread(target=serve, args=(listener, path), daemon=True).start()
while os.getppid() == parent:  # until Chromium exits
    time.sleep(0.5)
"""


def _pump(a: socket.socket, b: socket.socket) -> None:
    with suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    for s in (a, b):
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def _serve(listener: socket.socket, port: int) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed: the browser is done
        out = socket.create_connection(("127.0.0.1", port), timeout=30)
        out.settimeout(None)
        threading.Thread(target=_pump, args=(conn, out), daemon=True).start()
        threading.Thread(target=_pump, args=(out, conn), daemon=True).start()


@contextmanager
def isolated_chromium(folder: Path, ports: list[int]) -> Iterator[str]:
    """A launcher that starts Chromium in a new network namespace where 127.0.0.1:PORT leads to this host's."""
    chromium = shutil.which("chromium")
    assert chromium is not None
    folder.mkdir(parents=True, exist_ok=True)
    listeners = []
    for port in ports:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(folder / f"{port}.sock"))
        listener.listen(64)
        threading.Thread(target=_serve, args=(listener, port), daemon=True).start()
        listeners.append(listener)
    script = folder / "forwarder.py"
    script.write_text(FORWARDER, encoding="utf-8")
    # A namespace needs root, or a user namespace of its own.
    unshare = "unshare --net" if os.geteuid() == 0 else "unshare --net --map-root-user"
    launcher = folder / "chromium-isolated"
    ports_arg = ",".join(map(str, ports))
    launcher.write_text(
        f'#!/bin/sh\nexec {unshare} -- "{sys.executable}" "{script}" "{folder}" {ports_arg} "{chromium}" -- "$@"\n',
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    try:
        yield str(launcher)
    finally:
        for listener in listeners:
            listener.close()
