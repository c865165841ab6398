"""The asset of a meter event sync: usage rows of a partition sent to Stripe Billing as meter events.

It runs downstream of its usage model and of the customer sync whose writeback names the
customers; a run sends the events of its partitions (a backfill's range, in one run) that Stripe
does not have yet, and records per partition what it read, sent, rejected and billed, each in its
own materialization, with the same two checks as every sync (rows rejected, writes refused), judged
over the run.
"""

from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import dagster as dg
from pydantic import Field

from census_stripe.meter_sync import MeterEventReport, MeterRunOptions, run_meter_event_sync
from census_stripe.orchestration.metadata import metadata_table, summary_markdown
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import (
    SYNC_FILE_METADATA,
    SYNC_GROUP,
    WAREHOUSE_RESOURCE,
    Sync,
    model_slice,
    partition_slices,
    partitions_definition,
    shown_path,
    sync_asset_key,
    sync_asset_key_of,
    sync_check_results,
    sync_check_specs,
    sync_outcome,
)
from census_stripe.orchestration.warehouses import WarehouseResource
from census_stripe.plan.meter_events import REJECTIONS, CustomerSource, rejected_column
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
    """What the run did (in a backfill: in this partition), then one short fact a line, each
    wrapped to what the Overview tab shows at a 1280 px window."""
    counts = report.counts()
    planned = counts["planned_events"]
    if report.options.dry_run:
        did = f"Dry run: would send {planned} meter events"
    elif planned == 0:
        did = f"Nothing to send: {counts['already_sent']} events already in Stripe"
    else:
        did = f"Sent {counts['accepted']} of {planned} meter events"
    partitions = len(report.options.partitions)
    billed = "would be billed" if report.options.dry_run else "billed"
    facts = [
        f"partition {report.partition}" + (f", one of {partitions} in this run" if partitions > 1 else "")
        if report.partition
        else None,
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
        *(
            f"{billed} to {meter['meter']}: {meter['units']} units, {meter['events']} events, "
            f"{meter['customers']} customers"
            for meter in meter_totals(report)
        ),
        _shown(report),
        f"Stripe account {report.account}",
        f"{counts['stripe_api_calls']} Stripe API call{'' if counts['stripe_api_calls'] == 1 else 's'}"
        + (f" (the run's, for its {partitions} partitions)" if partitions > 1 else ""),
    ]
    return summary_markdown(did + ".", facts)


def _shown(report: MeterEventReport) -> str | None:
    customers = sum(meter["customers"] for meter in meter_totals(report))
    if not customers:
        return None
    # The view's name is its own entry: too long for a line of the summary.
    shown = len(report.billed)
    return f"preview: showing {shown} of {customers} customers; the whole list is in the warehouse (billed_view)"


def units_text(value: object) -> str:
    """A sum of values as a person reads it: `12,345`, `1.5`, no trailing zeros."""
    number = Decimal(str(value)).normalize()
    return f"{number:,f}"


def meter_totals(report: MeterEventReport) -> list[dict]:
    """Per meter (event name), what the partition's customers are billed, from the preview's rows
    (each carries its meter's totals)."""
    totals = {
        row["event_name"]: {
            "meter": str(row["event_name"]),
            "units": units_text(row["meter_units"]),
            "events": int(row["meter_events"]),
            "customers": int(row["customers"]),
        }
        for row in report.billed
    }
    return list(totals.values())


def _billed_rows(report: MeterEventReport) -> dg.MetadataValue:
    several = len({row["event_name"] for row in report.billed}) > 1
    records = [
        {
            "customer": row["customer_key"],
            "units": units_text(row["units"]),
            "events": str(int(row["events"])),
            "meter": row["event_name"] if several else None,
            "stripe_customer_id": row["stripe_customer_id"],
        }
        for row in report.billed
    ]
    return metadata_table(
        records,
        ("customer", "The customer's key in the model"),
        ("units", "The values of the customer's events, summed"),
        ("events", "Meter events"),
        ("meter", "The event name"),
        ("stripe_customer_id", "The Stripe customer billed"),
    )


def _rejected_rows(report: MeterEventReport) -> dg.MetadataValue:
    meter = report.spec.meter_event
    records = [
        {
            "customer": row["customer_key"],
            "column": rejected_column(meter, row["verdict"], row["empty_column"]),
            "reason": REJECTIONS[row["verdict"]],
            "value": None if row["value"] is None else str(row["value"]),
            "timestamp": None if row["event_time"] is None else str(row["event_time"]),
        }
        for row in report.rejected_sample[:SAMPLE_ROWS]
    ]
    return metadata_table(
        records,
        ("customer", f"The customer's key in the model ({meter.customer.column})"),
        ("column", "The model column the reason is about"),
        ("reason", ""),
        ("value", f"In the model ({meter.value_column})"),
        ("timestamp", f"In the model ({meter.timestamp_column}), as UTC"),
    )


def _rejection_reasons(report: MeterEventReport) -> dg.MetadataValue:
    """Every reason with its count, most common first (counted by the plan; exact however many)."""
    meter = report.spec.meter_event
    empty = sorted({str(row["empty_column"]) for row in report.rejected_sample if row["empty_column"]})
    counted = sorted(
        ((verdict, n) for verdict, n in report.verdicts.items() if verdict in REJECTIONS), key=lambda pair: -pair[1]
    )
    records = [
        {
            "rows": str(n),
            "column": ", ".join(empty) if verdict == "no_identity" and empty else rejected_column(meter, verdict),
            "reason": REJECTIONS[verdict],
        }
        for verdict, n in counted
    ]
    # The counts first: a reason may be long enough to push what follows it off a 1280 px window.
    return metadata_table(
        records, ("rows", "Rows with this reason"), ("column", "The model column it is about"), ("reason", "")
    )


def _event_rows(rows: list[dict], reason: dict[str, str]) -> dg.MetadataValue:
    records = [
        {
            "customer": row["customer_key"],
            "reason": reason.get(str(row["verdict"]), str(row["verdict"])),
            "value": row["value"],
            "sent_value": row["sent_value"],
            "timestamp": str(row["event_time"]),
            "event": str(row["event_key"]),
        }
        for row in rows[:SAMPLE_ROWS]
    ]
    return metadata_table(
        records,
        ("customer", "The customer's key in the model"),
        ("reason", ""),
        ("value", "In the model"),
        ("sent_value", "As Stripe has it"),
        ("timestamp", ""),
        ("event", "The event's key in the ledger"),
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
    if report.billed:
        metadata["preview"] = _billed_rows(report)
        metadata["billed_per_meter"] = metadata_table(
            [{name: str(value) for name, value in meter.items()} for meter in meter_totals(report)],
            ("meter", "The event name"),
            ("customers", ""),
            ("events", ""),
            ("units", "The values of the events, summed"),
        )
    if report.rejected:
        metadata["rejection_reasons"] = _rejection_reasons(report)
    if report.rejected_sample:
        metadata["rejected_rows"] = _rejected_rows(report)
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
        "billed_view": dg.MetadataValue.text(report.billed_view),
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
            partitions=partition_slices(spec.partitions, context) if spec.partitions else (),
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
        # Each partition gets its own counts, rejections and preview, also from a backfill's one run.
        per_partition = {key: meter_event_metadata(report.of_partition(key)) for key, _ in options.partitions}
        metadata = {} if per_partition else meter_event_metadata(report)
        yield from sync_outcome(
            context, metadata, meter_event_checks(spec, report), options.dry_run, per_partition or None
        )

    return _sync
