"""Reverse ETL from dbt models to Stripe customers, as a Dagster Component.

`StripeSyncComponent`, `sync_resources` and `sync_executor` are imported on first use, so that the
engine's modules (spec, plan, warehouse) load without Dagster.
"""

from importlib import import_module

_EXPORTS = {
    "StripeSyncComponent": "census_stripe.component",
    "sync_resources": "census_stripe.orchestration.project",
    "sync_executor": "census_stripe.orchestration.executor",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'census_stripe' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    # Dagster's `dg` lists the components of a registry module through dir().
    return [*globals(), *_EXPORTS]
