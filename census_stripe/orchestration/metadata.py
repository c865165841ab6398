"""A sync report as Dagster metadata, in the order a person reads it: a summary, the preview (one
row per customer), the problems, links to the customers written, then the counts the UI plots.

Dagster shows metadata in insertion order. On the asset's Overview tab the value column is
narrow (at a 1280 px window about 36 characters show before it scrolls sideways), and one wide
table widens the whole column: the summary is therefore written in short lines that fit.

With `mask_personal_data: true` in the sync file, emails, names, phones and addresses are masked
everywhere in the metadata (`ada@example.com` -> `a***@example.com`), reasons included.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable

import dagster as dg

from census_stripe.plan.planner import Action, FieldChange, PlannedRow
from census_stripe.sync import SyncReport

PREVIEW_ROWS = 50
LINKS = 5
SUMMARY_WIDTH = 36  # characters: what the Overview tab shows of a line at a 1280 px window
LIST_WIDTH = 30  # the same, for an item of a list
PERSONAL_FIELDS = ("email", "name", "phone", "description")
PERSONAL_OBJECTS = ("address.", "shipping.")
# The preview's order: what changes in Stripe first, then rows written again unchanged, then skips.
_WRITE_WITH_CHANGES, _WRITE_UNCHANGED, _SKIP = range(3)


def _table(records: list[dict], *columns: tuple[str, str]) -> dg.MetadataValue:
    """A table of the first PREVIEW_ROWS records, without the columns that are empty in all of them."""
    shown = records[:PREVIEW_ROWS]
    kept = [(name, about) for name, about in columns if any(record.get(name) not in (None, "") for record in shown)]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string", description=about) for name, about in kept])
    rows = [dg.TableRecord({name: record.get(name) for name, _ in kept}) for record in shown]
    return dg.MetadataValue.table(rows, schema=schema)


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def change_text(change: FieldChange, privacy: _Privacy, created: bool) -> str:
    """`field: before → after`; a new customer's fields have no before."""
    after = privacy.value(change.field, change.after)
    if created:
        return f"{change.field}: {after}"
    before = privacy.value(change.field, change.before)
    return f"{change.field}: {before or '(empty)'} → {after or '(empty)'}"


def _what_happens(row: PlannedRow, key_field: str, privacy: _Privacy) -> str:
    """The action, then what it changes: `update — metadata.plan: free → pro`. One cell, not two,
    so that key, action and change fit side by side in the UI's narrow metadata column."""
    if row.action is Action.SKIP_NOT_FOUND:
        return f"skip — {privacy.reason(row.reason, row)}"
    if not row.changes:
        return "update — no change; written again, as a partition run writes all its rows"
    created = row.action is Action.CREATE
    # The key is the row's first column already; it is a change only when its spelling changes.
    shown = [change for change in row.changes if not (created and change.field == key_field)]
    return f"{row.action.value} — " + "; ".join(change_text(change, privacy, created) for change in shown)


def _preview_order(row: PlannedRow) -> int:
    if row.action is Action.SKIP_NOT_FOUND:
        return _SKIP
    return _WRITE_WITH_CHANGES if row.changes else _WRITE_UNCHANGED


def preview_rows(report: SyncReport) -> list[PlannedRow]:
    """Every row the run writes or skips, the most informative first (the sort keeps the model's order
    within each kind)."""
    return sorted(report.plan.of(Action.CREATE, Action.UPDATE, Action.SKIP_NOT_FOUND), key=_preview_order)


def _preview(report: SyncReport, rows: list[PlannedRow], privacy: _Privacy) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md(_lines(nothing_to_change(report.counts()), SUMMARY_WIDTH))
    created = {id(outcome.row): outcome.stripe_id for outcome in report.outcomes if outcome.status == "created"}
    records = [
        {
            "key": privacy.key(row.candidate.key_value),
            "changes": _what_happens(row, report.spec.key.field, privacy),
            "stripe_customer_id": created.get(id(row), row.stripe_id),
        }
        for row in rows
    ]
    return _table(
        records,
        ("key", "The row's mapping key, as in the model"),
        ("changes", "create, update or skip, then field: before → after for the fields that change"),
        ("stripe_customer_id", "The Stripe customer updated, or created by this run"),
    )


def nothing_to_change(counts: dict[str, int]) -> str:
    return f"nothing to change: {_plural(counts['unchanged'], 'customer')} unchanged"


def _problems(rows: list[tuple[PlannedRow, str | None, str | None]], privacy: _Privacy) -> dg.MetadataValue:
    records = [
        {
            "key": privacy.key(row.candidate.key_value),
            "reason": privacy.reason(reason, row),
            "stripe_customer_id": stripe_id,
        }
        for row, stripe_id, reason in rows
    ]
    return _table(
        records,
        ("key", "The row's mapping key, as in the model"),
        ("reason", "Why the row was not written; Stripe's own message when Stripe refused it"),
        ("stripe_customer_id", "The Stripe customer it would have updated"),
    )


def reason_kind(reason: str) -> str:
    """A reason without the values it quotes (`invalid email: 'x'` -> `invalid email`), to count by."""
    return reason.split(": ", 1)[0].split(", got ", 1)[0]


def _counted(reasons: list[str], about: str) -> dg.MetadataValue:
    return _table(
        [{"reason": reason, "rows": str(n)} for reason, n in Counter(reasons).most_common()],
        ("reason", about),
        ("rows", "Rows with this reason"),
    )


def _lines(text: str, width: int) -> str:
    """Markdown hard line breaks, so that no line is wider than the Overview tab shows."""
    return "  \n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def headline(report: SyncReport, counts: dict[str, int]) -> str:
    """What the run did, in one sentence."""
    creates, updates = counts["planned_creates"], counts["planned_updates"]
    if not (creates or updates):
        return nothing_to_change(counts).capitalize() + "."
    if report.options.dry_run:
        return f"Dry run: would create {creates} and update {_plural(updates, 'Stripe customer')}."
    created, updated = counts["created"], counts["updated"]
    done = [f"created {created}" if created else "", f"updated {updated}" if updated else ""]
    written = " and ".join(filter(None, done))
    sentence = f"{written} {'Stripe customer' if created + updated == 1 else 'Stripe customers'}" if written else ""
    failed = _plural(counts["failed"], "write") + " failed" if counts["failed"] else ""
    sentence = "; ".join(filter(None, [sentence, failed]))
    return sentence[0].upper() + sentence[1:] + "."


def _scope(report: SyncReport) -> str:
    options = report.options
    if options.model_slice is not None:
        where = options.model_slice
        rows = (
            f"{where.column} in {', '.join(where.values)}"
            if where.values
            else f"{where.column} from {where.start:%Y-%m-%d} to {where.end:%Y-%m-%d}"
        )
        return f"partition: {rows}, every row written again"
    if options.full_resync:
        return "full resync: every row compared with Stripe"
    return "rows changed since last sync"


def summary(report: SyncReport, counts: dict[str, int], shown: int, total: int) -> str:
    """The headline, then one short fact a line."""
    dry_run = report.options.dry_run
    facts = [
        f"would create {counts['planned_creates']}, update {counts['planned_updates']}"
        if dry_run
        else f"{counts['created']} created, {counts['updated']} updated",
        f"{counts['unchanged']} unchanged, {counts['rejected']} rejected",
        None if dry_run else f"{counts['failed']} failed",
        f"{counts['skipped_not_found']} skipped: not in Stripe" if report.spec.behavior == "update_only" else None,
        f"{_plural(counts['rows_read'], 'row')} in {report.spec.model}",
        f"Stripe {report.account}" if report.account else None,
        "dry run: nothing written" if dry_run else "not a dry run",
        _scope(report),
        _plural(counts["stripe_api_calls"], "Stripe API call"),
        f"preview: showing {shown} of {total}; every row: whole_plan" if total and report.changes_query else None,
    ]
    items = "\n".join(f"- {_lines(fact, LIST_WIDTH)}" for fact in facts if fact)
    return f"**{_lines(headline(report, counts), SUMMARY_WIDTH)}**\n\n{items}"


def _links(stripe_ids: list[str], customer_url: Callable[[str], str | None]) -> str:
    if not stripe_ids:
        return "No customer was written in this run."
    urls = {stripe_id: customer_url(stripe_id) for stripe_id in stripe_ids}
    if None in urls.values():
        return "A local Stripe server, without a dashboard to link to: " + ", ".join(stripe_ids)
    return "\n".join(f"- [{stripe_id}]({url})" for stripe_id, url in urls.items())


def report_metadata(report: SyncReport, customer_url: Callable[[str], str | None]) -> dict[str, dg.MetadataValue]:
    """`customer_url` gives a customer's page in Stripe's dashboard, or None without a dashboard."""
    counts = report.counts()
    privacy = _Privacy(report)
    previewed = preview_rows(report)
    rejected = report.plan.of(Action.REJECT)
    failed = [o for o in report.outcomes if o.status == "failed"]
    skipped = report.plan.of(Action.SKIP_NOT_FOUND)
    metadata: dict[str, dg.MetadataValue] = {
        "summary": dg.MetadataValue.md(summary(report, counts, min(len(previewed), PREVIEW_ROWS), len(previewed))),
        "preview": _preview(report, previewed, privacy),
    }
    if previewed and report.changes_query:
        metadata["whole_plan"] = dg.MetadataValue.text(report.changes_query)
    if rejected:
        metadata["rejected_rows"] = _problems([(row, row.stripe_id, row.reason) for row in rejected], privacy)
        kinds = [reason_kind(problem) for row in rejected for problem in row.reason.split("; ")]
        metadata["rejection_reasons"] = _counted(kinds, "The kind of problem")
    if failed:
        metadata["failed_rows"] = _problems([(o.row, o.stripe_id, o.error) for o in failed], privacy)
        metadata["failure_reasons"] = _counted([o.error for o in failed], "Stripe's message")
    if skipped:
        metadata["skipped_rows"] = _problems([(row, None, row.reason) for row in skipped], privacy)
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
    written = [o.stripe_id for o in report.outcomes if o.status != "failed"][:LINKS]
    metadata["stripe_customers"] = dg.MetadataValue.md(_links(written, customer_url))
    metadata |= {name: dg.MetadataValue.int(value) for name, value in counts.items()}
    metadata |= {
        "stripe_account": dg.MetadataValue.text(str(report.account)),
        "dry_run": dg.MetadataValue.bool(report.options.dry_run),
        "full_resync": dg.MetadataValue.bool(report.options.full_resync),
    }
    if report.plan.lookup:
        metadata["stripe_lookup"] = dg.MetadataValue.text(report.plan.lookup)
    return metadata
