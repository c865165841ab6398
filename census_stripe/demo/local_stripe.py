"""A local Stripe server (localstripe) for the demo and the tests, run as a separate process.

localstripe is GPL and only ever runs as its own process; nothing here imports it. Each server
keeps its store in a file of its own (localstripe_server.py): `saved_data` for the demo, which
keeps its customers between runs, otherwise a file in a folder of its own under the project's data
folder, removed when the server stops. Never localstripe's own /tmp/localstripe.pickle, which every
localstripe on the machine shares.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from census_stripe.settings import DATA_DIR


def stop_process_group(process: subprocess.Popen, first_signal: int, grace_seconds: float = 10) -> None:
    """Signal a process started with `start_new_session=True` and all its children; kill what lingers.

    Children are found before the signal, by parentage: one that moved to a group of its own, or was
    re-parented to init when its parent exited first, is stopped all the same.
    """
    if process.poll() is not None:
        return
    descendants = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, first_signal)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _, lingering = psutil.wait_procs(descendants, timeout=grace_seconds)
    for child in lingering:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(lingering, timeout=grace_seconds)


def start_server(
    command: list[str], log_path: Path | None = None, timeout: float = 120, env=None, cwd=None
) -> tuple[subprocess.Popen, int]:
    """Start one of the project's servers in its own process group; return it and its port once it
    listens. The server binds its own port and reports it in the file named by the `--port-file`
    appended here (`announce_port`), so no other process can take the port between its choice and
    its use. `timeout` is a deadline for a server that cannot start, not a timing."""
    with tempfile.TemporaryDirectory(prefix="server_") as folder:
        port_file = Path(folder) / "port"
        with open(log_path or os.devnull, "ab") as log:  # the server writes to its own copy of the file
            process = subprocess.Popen(
                [*command, "--port-file", str(port_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with code {process.returncode}")
            if port_file.exists():
                return process, int(port_file.read_text())
            time.sleep(0.05)
    stop_process_group(process, signal.SIGKILL)
    raise TimeoutError(f"{command[:3]} did not listen within {timeout:.0f}s")


def announce_port(listening: socket.socket, port_file: Path | None) -> int:
    """Reports the port of a socket that listens, in `port_file` (written whole, then renamed into
    place, so that a reader never sees half a number); returns it."""
    port = listening.getsockname()[1]
    if port_file is not None:
        partial = port_file.with_name(port_file.name + ".partial")
        partial.write_text(str(port))
        partial.replace(port_file)
    return port


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free, else any free port: free now, and another process may take it before it
    is used. Only for a server that cannot bind a port of its own choosing (see `start_server`)."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            # As the servers themselves bind: a port whose last connections linger in TIME_WAIT
            # (right after the previous run's server stopped) is free; one being listened on is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("the OS always has a free port")


class LocalStripe:
    """`with LocalStripe() as server: server.url` — a fresh localstripe on a port of its choosing, or on
    `port` when that one is free."""

    def __init__(self, port: int = 0, saved_data: Path | None = None, log_path: Path | None = None):
        self.port = port
        self.saved_data = saved_data
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalStripe:
        if self.saved_data:
            store = self.saved_data
            store.parent.mkdir(parents=True, exist_ok=True)
        else:
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            self._scratch = tempfile.TemporaryDirectory(prefix="localstripe_", dir=DATA_DIR)
            store = Path(self._scratch.name) / "localstripe.pickle"
        server = [sys.executable, "-m", "census_stripe.demo.localstripe_server", str(store), "--port", str(self.port)]
        self._process, self.port = start_server(server, self.log_path)
        return self

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process, signal.SIGTERM)
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
