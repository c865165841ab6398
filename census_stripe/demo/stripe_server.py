"""A local Stripe for a first try in your own Dagster project, started and stopped with one command:

    python -m census_stripe.demo.stripe_server start
    python -m census_stripe.demo.stripe_server stop

It is the project's Stripe test double (census_stripe/demo/stripe_double.py: Customers, Products,
Prices and meter events, modelled on Stripe's documented behaviour), run in the background on a free
port, with its objects kept in data/local_stripe.json of your Dagster project (or
CENSUS_STRIPE_DATA_DIR). `start` returns once the server answers, prints its address and test key,
and writes both to the project's .env as STRIPE_API_BASE and STRIPE_API_KEY: `dg` and `dagster`
read that file, so the syncs reach this server and no other. `stop` stops it (its data is saved)
and takes the two lines out of .env again. Starting it twice reuses the running server.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from dotenv import dotenv_values, set_key, unset_key

from census_stripe.demo.local_stripe import start_server
from census_stripe.settings import DATA_DIR, dagster_project_root

TEST_KEY = "sk_test_local"
SERVER_MODULE = "census_stripe.demo.stripe_double"
STORE = DATA_DIR / "local_stripe.json"
PID_FILE = DATA_DIR / "local_stripe.pid"
LOG = DATA_DIR / "local_stripe.log"


@dataclass(frozen=True)
class Server:
    pid: int
    port: int
    started: float  # the process's start time: a pid the system gave to another process since is not ours

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.started and SERVER_MODULE in process.cmdline()
        except psutil.Error:
            return False


def recorded() -> Server | None:
    """The server `start` last started for this project, running or not."""
    try:
        return Server(**json.loads(PID_FILE.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def env_file() -> Path:
    return dagster_project_root() / ".env"


def start(port: int) -> Server:
    server = recorded()
    if server is None or not server.is_running():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", SERVER_MODULE, "--port", str(port), "--store", str(STORE)]
        process, listening = start_server(command, LOG)  # on `port` if it is free, else on one the system picks
        server = Server(process.pid, listening, psutil.Process(process.pid).create_time())
        PID_FILE.write_text(json.dumps(asdict(server)))
    env = env_file()
    env.touch()
    set_key(env, "STRIPE_API_BASE", server.url, quote_mode="never")
    set_key(env, "STRIPE_API_KEY", TEST_KEY, quote_mode="never")
    return server


def stop() -> Server | None:
    """Stops the server if it runs, and takes what `start` wrote out of .env; the server, if there was one."""
    server = recorded()
    if server is None:
        return None
    if server.is_running():
        process = psutil.Process(server.pid)
        process.send_signal(signal.SIGTERM)  # the double saves its objects on the way out
        process.wait(timeout=60)
    PID_FILE.unlink()
    env = env_file()
    if env.exists():
        values = dotenv_values(env)
        # Only what `start` wrote: an address or key the user put there since stays.
        if values.get("STRIPE_API_BASE") == server.url:
            unset_key(env, "STRIPE_API_BASE")
        if values.get("STRIPE_API_KEY") == TEST_KEY:
            unset_key(env, "STRIPE_API_KEY")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=0, help="the port to try first (default: any free port)")
    args = parser.parse_args()
    if args.action == "start":
        server = start(args.port)
        print(f"A local Stripe (census_stripe's Stripe test double) is running at {server.url} (pid {server.pid}).")
        print(f"  Test key:  {TEST_KEY}")
        print(f"  Written to {env_file()}: STRIPE_API_BASE={server.url} and STRIPE_API_KEY={TEST_KEY}")
        print(f"  Its data:  {STORE}; its log: {LOG}")
        print("  Stop it:   python -m census_stripe.demo.stripe_server stop")
    elif (stopped := stop()) is None:
        print(f"No local Stripe was started for this project (no {PID_FILE}).")
    else:
        print(f"Stopped the local Stripe at {stopped.url}; its data stays in {STORE}.")


if __name__ == "__main__":
    main()
