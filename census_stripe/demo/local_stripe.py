"""A local Stripe server (localstripe) for the demo and the tests, run as a separate process.

localstripe is GPL and only ever runs as its own process; nothing here imports it. It keeps its
store in the fixed file /tmp/localstripe.pickle, so `saved_data` lets the demo keep its customers
between runs by copying that file in before start and out after stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

LOCALSTRIPE_STORE = Path("/tmp/localstripe.pickle")


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
    command: list[str], port: int, log_path: Path | None = None, timeout: float = 30, env=None, cwd=None
) -> subprocess.Popen:
    """Start a server in its own process group and return once it accepts connections on `port`."""
    with open(log_path or os.devnull, "ab") as log:  # the server writes to its own copy of the file
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited with code {process.returncode} (port {port})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    stop_process_group(process, signal.SIGKILL)
    raise TimeoutError(f"{command[:3]} did not listen on port {port} within {timeout:.0f}s")


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free, else any free port."""
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
    """`with LocalStripe() as server: server.url` — a fresh localstripe on a free port."""

    def __init__(self, port: int | None = None, saved_data: Path | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.saved_data = saved_data
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalStripe:
        command = [sys.executable, "-m", "localstripe", "--port", str(self.port)]
        if self.saved_data and self.saved_data.exists():
            shutil.copyfile(self.saved_data, LOCALSTRIPE_STORE)
        else:
            command.append("--from-scratch")
        self._process = start_server(command, self.port, self.log_path)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        stop_process_group(self._process, signal.SIGTERM)
        if self.saved_data and LOCALSTRIPE_STORE.exists():
            self.saved_data.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(LOCALSTRIPE_STORE, self.saved_data)

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
