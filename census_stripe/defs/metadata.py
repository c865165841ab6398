"""A sync report as Dagster metadata: counts to plot over runs, the preview, rejections, links."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from census_stripe.plan.planner import Action
from census_stripe.sync import SyncReport

PREVIEW_ROWS = 50
LINKS = 5
_PREVIEW_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("key", "string", description="The row's mapping key"),
        dg.TableColumn("action", "string", description="create or update"),
        dg.TableColumn("stripe_customer_id", "string"),
        dg.TableColumn("field", "string", description="Stripe field"),
        dg.TableColumn("before", "string", description="In Stripe now (empty for a new customer)"),
        dg.TableColumn("after", "string", description="From the model"),
    ]
)
_PROBLEM_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("key", "string", description="The row's mapping key, as in the model"),
        dg.TableColumn("stripe_customer_id", "string"),
        dg.TableColumn("reason", "string"),
    ]
)

_DUPLICATES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("key", "string"),
        dg.TableColumn("stripe_customer_ids", "string", description="Every Stripe customer with this key"),
        dg.TableColumn("decision", "string", description="By the sync's duplicates_in_stripe policy"),
    ]
)


def _preview(report: SyncReport) -> dg.MetadataValue:
    records = []
    for row in report.plan.writes:
        for change in row.changes:
            if len(records) == PREVIEW_ROWS:
                break
            records.append(
                dg.TableRecord(
                    {
                        "key": row.candidate.key,
                        "action": row.action.value,
                        "stripe_customer_id": row.stripe_id,
                        "field": change.field,
                        "before": change.before,
                        "after": change.after,
                    }
                )
            )
    return dg.MetadataValue.table(records, schema=_PREVIEW_SCHEMA)


def _problems(rows: list[tuple[str | None, str | None, str]]) -> dg.MetadataValue:
    records = [
        dg.TableRecord({"key": key, "stripe_customer_id": stripe_id, "reason": reason})
        for key, stripe_id, reason in rows[:PREVIEW_ROWS]
    ]
    return dg.MetadataValue.table(records, schema=_PROBLEM_SCHEMA)


def _summary(report: SyncReport, counts: dict[str, int]) -> str:
    if report.options.dry_run:
        head = "**Dry run**: nothing was written. Running this sync would"
        tail = ""
    else:
        head = "This run planned to"
        tail = f"\n\nDone: {counts['created']} created, {counts['updated']} updated, {counts['failed']} failed."
    return (
        f"{head} create **{counts['planned_creates']}** and update **{counts['planned_updates']}** Stripe "
        f"customers, and leave **{counts['unchanged']}** unchanged, of {counts['rows_read']} model rows. "
        f"**{counts['rejected']}** rows are rejected"
        + (
            f" and **{counts['skipped_not_found']}** skipped (not in Stripe)"
            if report.spec.behavior == "update_only"
            else ""
        )
        + f". Stripe API calls: {counts['stripe_api_calls']}.{tail}"
    )


def report_metadata(report: SyncReport, customer_url: Callable[[str], str]) -> dict[str, dg.MetadataValue]:
    counts = report.counts()
    touched = [o.stripe_id for o in report.outcomes if o.status != "failed"][:LINKS]
    metadata: dict[str, dg.MetadataValue] = {name: dg.MetadataValue.int(value) for name, value in counts.items()}
    metadata |= {
        "summary": dg.MetadataValue.md(_summary(report, counts)),
        "dry_run": dg.MetadataValue.bool(report.options.dry_run),
        "full_resync": dg.MetadataValue.bool(report.options.full_resync),
        "preview": _preview(report),
        "rejected_rows": _problems(
            [(r.candidate.key_value, r.stripe_id, r.reason) for r in report.plan.of(Action.REJECT)]
        ),
        "failed_rows": _problems(
            [(o.row.candidate.key_value, o.stripe_id, o.error) for o in report.outcomes if o.status == "failed"]
        ),
        "stripe_customers": dg.MetadataValue.md(
            "\n".join(f"- [{customer_id}]({customer_url(customer_id)})" for customer_id in touched)
            or "No customer was written in this run."
        ),
    }
    if report.plan.lookup:
        metadata["stripe_lookup"] = dg.MetadataValue.text(report.plan.lookup)
    duplicates = [row for row in report.plan.rows if row.stripe_duplicates]
    if duplicates:
        metadata["stripe_duplicates"] = dg.MetadataValue.table(
            [
                dg.TableRecord(
                    {
                        "key": row.candidate.key,
                        "stripe_customer_ids": ", ".join(row.stripe_duplicates),
                        "decision": f"used {row.stripe_id}" if row.stripe_id else "rejected",
                    }
                )
                for row in duplicates[:PREVIEW_ROWS]
            ],
            schema=_DUPLICATES_SCHEMA,
        )
    if report.spec.behavior == "update_only":
        metadata["skipped_rows"] = _problems(
            [(r.candidate.key_value, None, r.reason) for r in report.plan.of(Action.SKIP_NOT_FOUND)]
        )
    return metadata
