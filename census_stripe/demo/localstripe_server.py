"""Run as `python -m census_stripe.demo.localstripe_server STORE [localstripe's own arguments]`.

localstripe keeps its store in the fixed file /tmp/localstripe.pickle and rewrites it on every
write, so two servers on one machine (the demo and a test run, two checkouts) overwrite each
other's customers. This entry point runs localstripe's own server with its store in STORE
instead. It is only ever the server process's main module: nothing in census_stripe imports it,
and localstripe (GPL) stays a separate process.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from localstripe import resources, server


def main() -> None:
    store_path = Path(sys.argv.pop(1))

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
    server.start()


if __name__ == "__main__":
    main()
