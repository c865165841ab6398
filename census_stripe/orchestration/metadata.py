"""A sync report as Dagster metadata: counts to plot over runs, the preview, problems, links.

With `mask_personal_data: true` in the sync file, emails, names, phones and addresses are masked
everywhere in the metadata (`ada@example.com` -> `a***@example.com`), reasons included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import dagster as dg

from census_stripe.plan.planner import Action, PlannedRow
from census_stripe.sync import SyncReport

PREVIEW_ROWS = 50
LINKS = 5
PERSONAL_FIELDS = ("email", "name", "phone", "description")
PERSONAL_OBJECTS = ("address.", "shipping.")


def _table(records: list[dict], *columns: tuple[str, str]) -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string", description=about) for name, about in columns])
    return dg.MetadataValue.table([dg.TableRecord(record) for record in records[:PREVIEW_ROWS]], schema=schema)


def mask(value: str | None) -> str | None:
    if not value:
        return value
    local, at, domain = value.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else f"{value[:1]}***"


def is_personal(field: str) -> bool:
    return field in PERSONAL_FIELDS or field.startswith(PERSONAL_OBJECTS)


class _Privacy:
    """Masks personal data when the sync asks for it; otherwise passes everything through."""

    def __init__(self, report: SyncReport):
        self.on = report.spec.mask_personal_data
        self.key_is_personal = is_personal(report.spec.key.field)

    def value(self, field: str, value: str | None) -> str | None:
        return mask(value) if self.on and is_personal(field) else value

    def key(self, value: str | None) -> str | None:
        return mask(value) if self.on and self.key_is_personal else value

    def reason(self, text: str | None, row: PlannedRow) -> str | None:
        """Reasons quote values (`invalid email: 'x'`): mask those quotes too."""
        if not (self.on and text):
            return text
        personal = {value for field, value in row.candidate.values.items() if value and is_personal(field)}
        if self.key_is_personal:
            personal |= {row.candidate.key_value, row.candidate.key} - {None, ""}
        for value in sorted(personal, key=len, reverse=True):
            text = text.replace(value, mask(value))
        return text


def _preview(report: SyncReport, privacy: _Privacy) -> dg.MetadataValue:
    # The change first: in the UI's narrow metadata column, the first columns are the ones seen.
    records = [
        {
            "action": row.action.value,
            "field": change.field,
            "before": privacy.value(change.field, change.before),
            "after": privacy.value(change.field, change.after),
            "key": privacy.key(row.candidate.key),
            "stripe_customer_id": row.stripe_id,
        }
        for row in report.plan.writes
        for change in row.changes
    ]
    return _table(
        records,
        ("action", "create or update"),
        ("field", "Stripe field"),
        ("before", "In Stripe now (empty for a new customer)"),
        ("after", "From the model"),
        ("key", "The row's mapping key"),
        ("stripe_customer_id", ""),
    )


def _problems(rows: list[tuple[PlannedRow, str | None, str | None]], privacy: _Privacy) -> dg.MetadataValue:
    records = [
        {
            "key": privacy.key(row.candidate.key_value),
            "stripe_customer_id": stripe_id,
            "reason": privacy.reason(reason, row),
        }
        for row, stripe_id, reason in rows
    ]
    return _table(
        records, ("key", "The row's mapping key, as in the model"), ("stripe_customer_id", ""), ("reason", "")
    )


def _summary(report: SyncReport, counts: dict[str, int]) -> str:
    if report.options.dry_run:
        head = "**Dry run**: nothing was written. Running this sync would"
        tail = ""
    else:
        head = "This run planned to"
        tail = f"\n\nDone: {counts['created']} created, {counts['updated']} updated, {counts['failed']} failed."
    skipped = ""
    if report.spec.behavior == "update_only":
        skipped = f" and **{counts['skipped_not_found']}** skipped (not in Stripe)"
    return (
        f"{head} create **{counts['planned_creates']}** and update **{counts['planned_updates']}** Stripe "
        f"customers, and leave **{counts['unchanged']}** unchanged, of {counts['rows_read']} model rows. "
        f"**{counts['rejected']}** rows are rejected{skipped}. Stripe API calls: {counts['stripe_api_calls']}.{tail}"
    )


def report_metadata(report: SyncReport, customer_url: Callable[[str], str]) -> dict[str, dg.MetadataValue]:
    counts = report.counts()
    privacy = _Privacy(report)
    failed = [o for o in report.outcomes if o.status == "failed"]
    touched = [o.stripe_id for o in report.outcomes if o.status != "failed"][:LINKS]
    metadata: dict[str, dg.MetadataValue] = {name: dg.MetadataValue.int(value) for name, value in counts.items()}
    metadata |= {
        "summary": dg.MetadataValue.md(_summary(report, counts)),
        "stripe_account": dg.MetadataValue.text(str(report.account)),
        "dry_run": dg.MetadataValue.bool(report.options.dry_run),
        "full_resync": dg.MetadataValue.bool(report.options.full_resync),
        "preview": _preview(report, privacy),
        "rejected_rows": _problems([(r, r.stripe_id, r.reason) for r in report.plan.of(Action.REJECT)], privacy),
        "failed_rows": _problems([(o.row, o.stripe_id, o.error) for o in failed], privacy),
        "failure_reasons": _table(
            [{"reason": reason, "rows": str(n)} for reason, n in Counter(o.error for o in failed).most_common()],
            ("reason", "Stripe's message"),
            ("rows", "Rows that failed so"),
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
        metadata["stripe_duplicates"] = _table(
            [
                {
                    "key": privacy.key(row.candidate.key),
                    "stripe_customer_ids": ", ".join(row.stripe_duplicates),
                    "decision": f"used {row.stripe_id}" if row.stripe_id else "rejected",
                }
                for row in duplicates
            ],
            ("key", ""),
            ("stripe_customer_ids", "Every Stripe customer with this key"),
            ("decision", "By the sync's duplicates_in_stripe policy"),
        )
    if report.spec.behavior == "update_only":
        skipped = [(r, None, r.reason) for r in report.plan.of(Action.SKIP_NOT_FOUND)]
        metadata["skipped_rows"] = _problems(skipped, privacy)
    return metadata
