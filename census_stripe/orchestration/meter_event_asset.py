"""The asset of a meter event sync: usage rows of a partition sent to Stripe Billing as meter events.

It runs downstream of its usage model and of the customer sync whose writeback names the
customers; each materialization sends the partition's events Stripe does not have yet and records
what it did as metadata, with the same two checks as every sync (rows rejected, writes refused).
"""

from dataclasses import dataclass
from functools import partial

import dagster as dg
from pydantic import Field

from census_stripe.meter_sync import MeterEventReport, MeterRunOptions, run_meter_event_sync
from census_stripe.orchestration.metadata import metadata_table
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import (
    SYNC_FILE_METADATA,
    SYNC_GROUP,
    WAREHOUSE_RESOURCE,
    Sync,
    model_slice,
    partitions_definition,
    shown_path,
    sync_asset_key,
    sync_asset_key_of,
    sync_check_results,
    sync_check_specs,
    sync_outcome,
)
from census_stripe.orchestration.warehouses import WarehouseResource
from census_stripe.plan.meter_events import REJECTIONS, CustomerSource
from census_stripe.spec import MeterEventSpec
from census_stripe.warehouse.state import SyncStateStore

SAMPLE_ROWS = 20


class MeterEventRunConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Judge every usage row and record the plan; send nothing.")


@dataclass(frozen=True)
class MeterEventSync:
    sync: Sync
    spec: MeterEventSpec
    customers: CustomerSource


def meter_event_description(spec: MeterEventSpec, model_name: str) -> str:
    meter = spec.meter_event
    event_name = f"`{meter.event_name}`" if meter.event_name else f"column `{meter.event_name_column}`"
    customer = (
        f"`{meter.customer.column}`, a key of the sync `{meter.customer.sync}` sent as its Stripe customer id"
        if meter.customer.sync
        else f"`{meter.customer.column}` (Stripe customer ids)"
    )
    intro = spec.description or f"Usage in {model_name} billed as Stripe meter events."
    return "\n".join(
        [
            intro,
            "",
            f"Reads the dbt model `{model_name}` and sends each row once as a meter event {event_name} "
            f"through {'the v2 meter event stream' if meter.api == 'stream' else 'v1 meter events'}.",
            "",
            "| Event | From |",
            "|---|---|",
            f"| customer (`{meter.customer_payload_key}`) | {customer} |",
            f"| value (`{meter.value_payload_key}`) | `{meter.value_column}` |",
            f"| timestamp | `{meter.timestamp_column}` |",
            f"| identifier | digest of the event name and `{'`, `'.join(meter.identity)}` |",
        ]
    )


def headline(report: MeterEventReport) -> str:
    counts = report.counts()
    planned = counts["planned_events"]
    if report.options.dry_run:
        did = f"Dry run: would send {planned} meter events"
    elif planned == 0:
        did = f"Nothing to send: {counts['already_sent']} events already in Stripe"
    else:
        did = f"Sent {counts['accepted']} of {planned} meter events"
    facts = [
        "a real run would stop before sending: no meter bills them (meter_check)" if report.meter_problems else None,
        f"{counts['rows_read']} usage rows read",
        f"{counts['already_sent']} already sent",
        f"{counts['rejected']} rejected before any call" if counts["rejected"] else None,
        f"{counts['refused']} refused by Stripe" if counts["refused"] else None,
        f"{counts['in_doubt']} without an answer (sent again next run)" if counts["in_doubt"] else None,
        f"{counts['unsent']} not sent (429s to the end, or the run stopped): sent next run"
        if counts["unsent"]
        else None,
        f"{counts['changed_after_sent']} changed after sent" if counts["changed_after_sent"] else None,
        f"{counts['unconfirmed']} unconfirmed past Stripe's 24 hours" if counts["unconfirmed"] else None,
    ]
    return "\n".join(
        [f"**{did}.**", "", *(f"- {fact}" for fact in facts if fact), f"- Stripe account {report.account}"]
    )


def _event_rows(rows: list[dict], reason: dict[str, str]) -> dg.MetadataValue:
    records = [
        {
            "event": str(row["event_key"]),
            "reason": reason.get(str(row["verdict"]), str(row["verdict"])),
            "customer": row["stripe_customer_id"],
            "value": row["value"],
            "sent_value": row["sent_value"],
            "timestamp": str(row["event_time"]),
        }
        for row in rows[:SAMPLE_ROWS]
    ]
    return metadata_table(
        records,
        ("event", "The event's key in the ledger"),
        ("reason", ""),
        ("customer", "Stripe customer id"),
        ("value", "In the model"),
        ("sent_value", "As Stripe has it"),
        ("timestamp", ""),
    )


ATTENTION = {
    "changed": "changed after it was sent: Stripe keeps the value sent",
    "unconfirmed": "sent (or its correction's cancel sent) by a run that got no answer over 23 hours ago: "
    "not resent (Stripe may have it)",
}


def meter_event_metadata(report: MeterEventReport) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {"summary": dg.MetadataValue.md(headline(report))}
    if report.meter_problems:  # only a dry run gets here with them: a real run stops
        metadata["meter_check"] = dg.MetadataValue.md("\n".join(f"- {problem}" for problem in report.meter_problems))
    if report.rejected_sample:
        metadata["rejected_rows"] = _event_rows(report.rejected_sample, REJECTIONS)
    if report.attention_sample:
        metadata["needs_attention"] = _event_rows(report.attention_sample, ATTENTION)
    refused = report.delivery.refused_sample
    if refused:
        metadata["refused_events"] = metadata_table(
            [{"identifier": event.identifier, "reason": why} for event, why in refused[:SAMPLE_ROWS]],
            ("identifier", ""),
            ("reason", "Stripe's message"),
        )
    metadata |= {name: dg.MetadataValue.int(value) for name, value in report.counts().items()}
    metadata |= {
        "stripe_account": dg.MetadataValue.text(str(report.account)),
        "dry_run": dg.MetadataValue.bool(report.options.dry_run),
        "ledger": dg.MetadataValue.text(report.ledger_table),
        "events_per_second": dg.MetadataValue.float(round(report.delivery.events_per_second, 1)),
    }
    return metadata


def meter_event_checks(spec: MeterEventSpec, report: MeterEventReport) -> list[dg.AssetCheckResult]:
    counts = report.counts()
    return sync_check_results(
        spec,
        rejected="usage rows rejected",
        rejected_of=(counts["rejected"], counts["rows_read"]),
        failed="meter events refused by Stripe",
        failed_of=(counts["refused"], counts["accepted"] + counts["refused"] + counts["in_doubt"]),
    )


def build_meter_event_asset(meter_sync: MeterEventSync, warehouse_kind: str) -> dg.AssetsDefinition:
    spec, sync = meter_sync.spec, meter_sync.sync
    key = sync_asset_key(spec)
    customer_sync = spec.meter_event.customer.sync

    @dg.asset(
        key=key,
        deps=[sync.model.asset_key, *([sync_asset_key_of(customer_sync)] if customer_sync else [])],
        group_name=SYNC_GROUP,
        kinds={"stripe", warehouse_kind},
        description=meter_event_description(spec, sync.model.name),
        metadata={SYNC_FILE_METADATA: dg.MetadataValue.path(shown_path(sync.path)), "object": spec.object},
        output_required=False,  # a dry run records an observation, not a materialization
        required_resource_keys={
            spec.stripe_resource,
            WAREHOUSE_RESOURCE,
            *([meter_sync.customers.stripe_resource] if meter_sync.customers.stripe_resource else []),
        },
        pool=f"stripe_sync_{spec.name}",
        partitions_def=partitions_definition(spec.partitions),
        backfill_policy=dg.BackfillPolicy.single_run() if spec.partitions else None,
        check_specs=sync_check_specs(spec, key, "meter events refused"),
    )
    def _sync(context: dg.AssetExecutionContext, config: MeterEventRunConfig):
        stripe: StripeResource = getattr(context.resources, spec.stripe_resource)
        warehouse: WarehouseResource = getattr(context.resources, WAREHOUSE_RESOURCE)
        options = MeterRunOptions(
            dry_run=config.dry_run,
            model_slice=model_slice(spec.partitions, context) if spec.partitions else None,
        )
        objects = stripe.objects()
        customer_resource = meter_sync.customers.stripe_resource
        customer_objects = getattr(context.resources, customer_resource).objects() if customer_resource else objects
        with warehouse.open() as session:
            store = SyncStateStore(session, warehouse.state_schema)
            report = run_meter_event_sync(
                spec,
                model=sync.model.relation,
                store=store,
                api=partial(stripe.meter_events, spec.meter_event),
                account_of=lambda: store.account(objects.connection_fingerprint, objects.identify_account),
                customers=meter_sync.customers,
                customer_account_of=lambda: store.account(
                    customer_objects.connection_fingerprint, customer_objects.identify_account
                ),
                run_id=context.run.run_id,
                options=options,
                log=context.log,
            )
        yield from sync_outcome(
            context, meter_event_metadata(report), meter_event_checks(spec, report), options.dry_run
        )

    return _sync
