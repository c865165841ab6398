"""What a Dagster project around the syncs adds to its defs folder: the resources the syncs use,
the job that runs the whole pipeline, and checks that no sync is lost or doubled."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import dagster as dg

from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import SYNC_FILE_METADATA, SYNC_GROUP
from census_stripe.orchestration.warehouses import warehouse_from_env
from census_stripe.spec import COMPONENT_TYPE, SyncConfigError

YAML_SUFFIXES = (".yaml", ".yml")
# Set to `true` in a deployment's environment only: the same definitions then refuse live keys on a
# developer's machine, where the variable is unset.
ALLOW_LIVE_MODE = "CENSUS_STRIPE_ALLOW_LIVE_MODE"
BILLING_API_BASE = "STRIPE_BILLING_API_BASE"


def sync_resources() -> dict[str, dg.ConfigurableResource]:
    """The `stripe`, `stripe_catalog` and `warehouse` resources the sync assets use, from the environment.

    STRIPE_API_KEY is read at run time (never stored in run config); STRIPE_API_BASE points the
    client at another server; CENSUS_STRIPE_WAREHOUSE and its variables pick the warehouse.
    `stripe_catalog` is the Stripe the product and price syncs name: the same as `stripe`, unless
    STRIPE_CATALOG_API_BASE gives it a server of its own (the demo's, as localstripe has no Prices).
    Live keys are refused unless CENSUS_STRIPE_ALLOW_LIVE_MODE is `true`.
    STRIPE_BILLING_API_BASE sends both resources' Billing meters and meter events to another server
    (the demo's, as localstripe has no Billing).
    """
    allow_live_mode = live_mode_allowed()
    return {
        "stripe": stripe_resource("STRIPE_API_BASE", allow_live_mode),
        "stripe_catalog": stripe_resource(
            "STRIPE_CATALOG_API_BASE" if os.environ.get("STRIPE_CATALOG_API_BASE") else "STRIPE_API_BASE",
            allow_live_mode,
        ),
        "warehouse": warehouse_from_env(),
    }


def live_mode_allowed() -> bool:
    """CENSUS_STRIPE_ALLOW_LIVE_MODE: `true` or `false` (the default, when unset); anything else is refused,
    so that a typo never decides about live mode."""
    value = os.environ.get(ALLOW_LIVE_MODE, "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{ALLOW_LIVE_MODE}={value!r}: use true (live keys allowed) or false")
    return value == "true"


def stripe_resource(api_base_variable: str, allow_live_mode: bool) -> StripeResource:
    """The account of STRIPE_API_KEY, at the server named by this variable, or Stripe when it is unset."""
    return StripeResource(
        api_key=dg.EnvVar("STRIPE_API_KEY"),
        api_base=dg.EnvVar(api_base_variable) if os.environ.get(api_base_variable) else None,
        allow_live_mode=allow_live_mode,
        billing_api_base=dg.EnvVar(BILLING_API_BASE) if os.environ.get(BILLING_API_BASE) else None,
    )


def sync_assets(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    return [
        asset
        for asset in defs.assets or []
        if isinstance(asset, dg.AssetsDefinition) and set(asset.group_names_by_key.values()) == {SYNC_GROUP}
    ]


def whole_model_sync_job(defs: dg.Definitions) -> dg.UnresolvedAssetJobDefinition:
    """The main job: every sync's dbt models, then the syncs of whole models. Partitioned syncs run
    per partition (from the UI, or as backfills), not here; their models are built, ready for them."""
    syncs = sync_assets(defs)
    partitioned = [asset for asset in syncs if asset.partitions_def is not None]
    return dg.define_asset_job(
        "sync_to_stripe",
        selection=dg.AssetSelection.assets(*syncs).upstream() - dg.AssetSelection.assets(*partitioned),
        description="Build the dbt models, then push them to Stripe: the whole pipeline.",
    )


def refuse_duplicate_syncs(defs: dg.Definitions) -> None:
    """Two instances with one sync name would be one asset twice: name both files."""
    files_by_key: dict[dg.AssetKey, list[str]] = defaultdict(list)
    for asset in sync_assets(defs):
        files_by_key[asset.key].append(str(asset.metadata_by_key[asset.key][SYNC_FILE_METADATA].value))
    for key, files in files_by_key.items():
        if len(files) > 1:
            raise SyncConfigError(
                files[1],
                [
                    (
                        "attributes.name",
                        f"sync {key.path[-1]!r} is also defined in {', '.join(files[:-1])}; rename one",
                    )
                ],
            )


def refuse_stray_sync_files(defs_folder: Path) -> None:
    """A sync in a file Dagster does not read as an instance (only `defs.yaml` is) would be silently
    ignored: refuse it, naming the file."""
    for path in sorted(defs_folder.rglob("*")):
        if path.suffix in YAML_SUFFIXES and path.name != "defs.yaml" and COMPONENT_TYPE in path.read_text():
            raise SyncConfigError(
                path,
                [
                    (
                        "(file)",
                        f"Dagster reads a sync only from a defs.yaml: move it to {path.parent / path.stem}/defs.yaml",
                    )
                ],
            )
