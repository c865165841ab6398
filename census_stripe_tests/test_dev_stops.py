"""`make dev` as a person runs it, stopped with Ctrl-C or a TERM to its process group: nothing it
started (webserver, daemon, code servers, the local Stripe server) may outlive it, and what it logged
says each warning once and ends without an error line from `make`."""

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from census_stripe.settings import PROJECT_ROOT
from census_stripe_tests.conftest import start_on_a_free_port

STOP_SECONDS = 120


def webserver_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.serial
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "Ctrl-C"])
def test_make_dev_leaves_nothing_running_when_stopped(tmp_path, stop_signal, processes):
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DAGSTER_", "CENSUS_STRIPE_"))}
    env["CENSUS_STRIPE_DATA_DIR"] = str(tmp_path)
    # Its own process group, as a terminal's foreground group: Ctrl-C reaches every process in it.
    # The test's virtualenv is taken as installed and the manifest as prepared (`make test` made both).
    make_dev = ["make", "--no-print-directory", "dev", f"VENV={venv}", "-o", f"{venv}/.installed"]
    make, port = start_on_a_free_port(
        lambda port: [*make_dev, f"DEV_ARGS=-p {port}"],
        processes,
        tmp_path / "make_dev.log",
        env=env,
        cwd=PROJECT_ROOT,
    )
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + STOP_SECONDS
        while not webserver_answers(port):  # its own webserver listens there: it answers once started
            assert time.monotonic() < deadline, (tmp_path / "make_dev.log").read_text()[-3000:]
            time.sleep(1)
        # Recorded while running: a process re-parented to init later is still known by its pid.
        started = {child.pid: child for child in psutil.Process(make.pid).children(recursive=True)}
        commands = [" ".join(child.cmdline()) for child in started.values()]
        assert any("dagster_webserver" in c for c in commands) and any("dagster._daemon" in c for c in commands)
        assert any("code-server" in c or "api grpc" in c for c in commands)
        assert any("localstripe" in c for c in commands)
        assert any("census_stripe.demo.stripe_double" in c for c in commands)  # the catalog's server

        os.killpg(make.pid, stop_signal)
        make.wait(timeout=STOP_SECONDS)
        _, alive = psutil.wait_procs(list(started.values()), timeout=STOP_SECONDS)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
        # The local Stripe data was saved on the way out, the customers' and the catalog's.
        assert (tmp_path / "localstripe.pickle").exists() and (tmp_path / "stripe_catalog.json").exists()
        log = (tmp_path / "make_dev.log").read_text()
        assert "Stopping the Dagster webserver, daemon and code servers ..." in log
        assert "make: ***" not in log, log[-3000:]  # a stop is how `make dev` ends, not an error
        assert "BetaWarning" not in log and "PreviewWarning" not in log
        assert "does not match the name" not in log  # the code location's name, as pyproject.toml gives it
        warnings = [
            re.sub(r"^.*? - ", "", line) for line in log.splitlines() if "WARNING" in line or "Warning:" in line
        ]
        assert len(warnings) == len(set(warnings)), warnings
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for process in started.values():
            if process.is_running():
                process.kill()
