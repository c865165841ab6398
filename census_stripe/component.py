"""`census_stripe.StripeSyncComponent`: one Stripe sync as a Dagster Component.

An instance is a folder in a Dagster project's defs folder holding a `defs.yaml`:

    type: census_stripe.StripeSyncComponent
    attributes:
      model: stripe_customers
      behavior: update_or_create
      key: {field: email, column: email}
      mapping: {name: full_name}

The attributes are the sync's settings (census_stripe/spec.py). Dagster checks their shape against
the schema (`dg check defs`); building the instance checks the rest (Stripe's field names and limits,
the model's columns), listing every problem at once as `<defs.yaml>: attributes.<field>: <problem>`.
The instance defines the sync asset, downstream of its dbt model, and the sensors and schedule its
`automation` asks for. The project provides the `stripe` and `warehouse` resources
(`census_stripe.sync_resources()`, from the environment).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
from dagster.components import ComponentLoadContext, Scaffolder, ScaffoldRequest
from pydantic import BaseModel

from census_stripe.plan.meter_events import CustomerSource
from census_stripe.settings import warehouse_kind
from census_stripe.spec import (
    ATTRIBUTES,
    COMPONENT_TYPE,
    AnySyncSpec,
    MeterEventSpec,
    SyncConfigError,
    SyncSettings,
    SyncSpec,
    load_sync_spec,
    sync_spec,
)

DEFS_FILE = "defs.yaml"

STARTING_ATTRIBUTES = """\
model: stripe_customers          # the dbt model to read; the sync runs downstream of it
# dbt_project: dbt               # its dbt project, a folder of this Dagster project (default: dbt_project)
behavior: update_or_create       # or update_only: never creates, skips rows not in Stripe
key:                             # how a row finds its Stripe customer
  field: email                   # or metadata.<name> for an external id
  column: email
mapping:                         # Stripe field: model column
  name: full_name
  metadata.plan: plan
automation:                      # what starts the sync, besides you in the UI
  eager: true                    # after every materialization of the model in Dagster
"""


class StripeSyncScaffolder(Scaffolder):
    """`dg scaffold defs census_stripe.StripeSyncComponent <name>`: a defs.yaml to fill in with your model's
    names (as it is, it reads the demo's model `stripe_customers`)."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        attributes = textwrap.indent(STARTING_ATTRIBUTES, "  ")
        (request.target_path / DEFS_FILE).write_text(f"type: {COMPONENT_TYPE}\nattributes:\n{attributes}")


@dg.scaffold_with(StripeSyncScaffolder)
class StripeSyncComponent(dg.Component):
    """Syncs a dbt model to Stripe customers, products, prices or meter events: one asset
    `stripe/<name>`, with its checks and triggers."""

    def __init__(self, settings: SyncSettings):
        self.settings = settings

    @classmethod
    def get_model_cls(cls) -> type[SyncSettings]:
        return SyncSettings

    @classmethod
    def load(cls, attributes: BaseModel | None, context: ComponentLoadContext) -> StripeSyncComponent:
        # Dagster hands over an instance of get_model_cls(), or None for a file without attributes.
        if not isinstance(attributes, SyncSettings):
            raise SyncConfigError(instance_file(context.path), [(ATTRIBUTES, "missing: a sync needs its settings")])
        return cls(attributes)

    def build_defs(self, context: ComponentLoadContext) -> dg.Definitions:
        # Imported here: Dagster discovers the component type without loading the sync's machinery.
        from census_stripe.orchestration.sync_asset import build_sync_asset, manifest_path, resolve_sync
        from census_stripe.orchestration.triggers import sync_triggers

        path = instance_file(context.path)
        spec = sync_spec(self.settings, instance_name(context.path), path)
        sync = resolve_sync(spec, path, manifest_path(spec, context.project_root))
        if isinstance(spec, MeterEventSpec):
            from census_stripe.orchestration.meter_event_asset import MeterEventSync, build_meter_event_asset

            meter_sync = MeterEventSync(sync, spec, customer_source(spec, context.path))
            return dg.Definitions(assets=[build_meter_event_asset(meter_sync, warehouse_kind())])
        check_product_sync(spec, context.path)
        sensors, schedules = sync_triggers(sync)
        return dg.Definitions(assets=[build_sync_asset(sync, warehouse_kind())], sensors=sensors, schedules=schedules)


def instance_file(path: Path) -> Path:
    """The file a person edits: the instance folder's defs.yaml."""
    return path / DEFS_FILE if path.is_dir() else path


def check_product_sync(spec: SyncSpec, instance: Path) -> None:
    """A price sync's `product_sync` must name a sync in the same defs folder."""
    if spec.product_sync and spec.product_sync not in sync_names_beside(instance):
        problem = f"no sync named {spec.product_sync!r} in {instance.parent}: name the sync that writes the products"
        raise SyncConfigError(instance_file(instance), [(f"{ATTRIBUTES}.product_sync", problem)])


def customer_source(spec: MeterEventSpec, instance: Path) -> CustomerSource:
    """A meter event sync's `customer.sync` must name a customer sync in the same defs folder, that
    writes through the same Stripe resource (at run time, meter_sync.py also compares the accounts)."""
    name = spec.meter_event.customer.sync
    if name is None:
        return CustomerSource()
    customer_syncs = {each.name: each for each in syncs_beside(instance) if isinstance(each, SyncSpec)}
    found = customer_syncs.get(name)
    if found is None or found.object != "customer":
        problem = f"no customer sync named {name!r} in {instance.parent}: name the sync that writes the customers"
        raise SyncConfigError(instance_file(instance), [(f"{ATTRIBUTES}.meter_event.customer.sync", problem)])
    if found.stripe_resource != spec.stripe_resource:
        # Stripe takes events for customers another account holds, and bills no one.
        problem = (
            f"the customer sync {name!r} writes its customers through {found.stripe_resource!r}, this sync sends "
            f"its events through {spec.stripe_resource!r}: an event bills only a customer of the account it is "
            f"sent to. Set stripe_resource: {found.stripe_resource}"
        )
        raise SyncConfigError(instance_file(instance), [(f"{ATTRIBUTES}.stripe_resource", problem)])
    return CustomerSource(found.name, found.key.field, found.stripe_resource)


def syncs_beside(path: Path) -> list[AnySyncSpec]:
    """The sync instances in the same defs folder as this one (itself included).
    A sibling whose file is broken reports that itself."""
    specs = []
    for sibling in path.parent.glob(f"*/{DEFS_FILE}"):
        try:
            specs.append(load_sync_spec(sibling))
        except SyncConfigError:
            continue
    return specs


def sync_names_beside(path: Path) -> set[str]:
    return {spec.name for spec in syncs_beside(path)}


def instance_name(path: Path) -> str:
    """The sync's default name: its instance folder's."""
    return path.name if path.is_dir() else path.parent.name
