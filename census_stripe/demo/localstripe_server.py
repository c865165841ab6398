"""Run as `python -m census_stripe.demo.localstripe_server STORE [--port PORT] [--port-file FILE]`.

localstripe keeps its store in the fixed file /tmp/localstripe.pickle and rewrites it on every
write, so two servers on one machine (the demo and a test run, two checkouts) overwrite each
other's customers. This entry point runs localstripe's own app with its store in STORE instead.

It binds its port itself, as localstripe does (both IPv4 and IPv6): PORT if that one is free, else
(or with PORT 0, the default) one the system chooses, reported in FILE once it listens. So no
other process can take the port between its choice and its use. It is only ever the server
process's main module: nothing in census_stripe imports it, and localstripe (GPL) stays a separate
process.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import socket
from pathlib import Path

from aiohttp import web
from localstripe import resources, server

from census_stripe.demo.local_stripe import announce_port


def keep_store_in(store_path: Path) -> None:
    def dump(store: resources.Store) -> None:
        # Written beside and renamed: a server killed mid-write leaves the last whole store.
        partial = store_path.with_suffix(".partial")
        with partial.open("wb") as saved:
            pickle.dump(dict(store), saved, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(store_path)

    def load(store: resources.Store) -> None:
        if store_path.exists():
            with store_path.open("rb") as saved:
                store.clear()
                store.update(pickle.load(saved))
        # The store exists from the start, an empty one too: the demo tells "no Stripe data" from it.
        dump(store)

    resources.Store.try_load_from_disk = load
    resources.Store.dump_to_disk = dump


def listen(port: int) -> socket.socket:
    """A socket listening on both IPv4 and IPv6, on `port` if it is free, else on one the system chooses."""
    listening = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(("::", port))
    except OSError:
        if not port:
            raise
        listening.bind(("::", 0))
    listening.listen(128)
    return listening


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    keep_store_in(args.store)
    server.store.try_load_from_disk()
    listening = listen(args.port)
    announce_port(listening, args.port_file)
    # localstripe's own access log, as its `start()` sets it up.
    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())
    web.run_app(server.app, sock=listening, access_log=access_log)


if __name__ == "__main__":
    main()
