"""A sync report as Dagster metadata, in the order a person reads it: a summary, the preview (one
row per object), the problems, links to the objects written, then the counts the UI plots.

Dagster shows metadata in insertion order. On the asset's Overview tab the value column is
narrow (at a 1280 px window about 36 characters show before it scrolls sideways), and one wide
table widens the whole column: the summary is therefore written in short lines that fit.

With `mask_personal_data: true` in the sync file, emails, names, phones and addresses are masked
everywhere in the metadata (`ada@example.com` -> `a***@example.com`), reasons included.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable, Iterable

import dagster as dg

from census_stripe.objects.base import StripeObjectType
from census_stripe.plan.planner import VERSION_CHANGE, WRITES, Action, FieldChange, PlannedRow
from census_stripe.sync import SyncReport

PREVIEW_ROWS = 50
LINKS = 5
SUMMARY_WIDTH = 34  # characters: what the Overview tab shows of a line at a 1280 px window
LIST_WIDTH = 28  # the same, for an item of a list
# A created object's fields in the preview: the first few in the object's own order (its version first),
# then how many more, so that each row is one line and its Stripe id stays in view at 1280 px.
CREATE_FIELDS_SHOWN = 2
CREATE_VALUE_WIDTH = 24
# What a row whose key column is empty shows where its key would be.
NO_KEY = "(a row with no key)"
# The metadata entry with the SQL that reads every row of the run's plan (the preview shows the first).
ALL_ROWS_SQL = "sql_for_every_row"
PERSONAL_FIELDS = ("email", "name", "phone", "description")
PERSONAL_OBJECTS = ("address.", "shipping.")
# The preview's order: what changes in Stripe first, then rows written again unchanged, then skips.
_WRITE_WITH_CHANGES, _WRITE_UNCHANGED, _SKIP = range(3)
_SKIPS = (Action.SKIP_NOT_FOUND, Action.SKIP_EXISTING)


def metadata_table(records: list[dict], *columns: tuple[str, str]) -> dg.MetadataValue:
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

    def key(self, value: str | None) -> str:
        if not value:
            return NO_KEY
        return (mask(value) or value) if self.on and self.key_is_personal else value

    def reason(self, text: str | None, row: PlannedRow) -> str | None:
        """Reasons quote values (`invalid email: 'x'`): mask those quotes too."""
        if not (self.on and text):
            return text
        personal = {value for field, value in row.candidate.values.items() if value and is_personal(field)}
        if self.key_is_personal:
            personal |= {key for key in (row.candidate.key_value, row.candidate.key) if key}
        for value in sorted(personal, key=len, reverse=True):
            text = text.replace(value, mask(value) or "")
        return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def change_text(change: FieldChange, privacy: _Privacy, created: bool) -> str:
    """`field: before → after`; a new object's fields have no before."""
    after = privacy.value(change.field, change.after)
    if created:
        return f"{change.field}: {after}"
    before = privacy.value(change.field, change.before)
    return f"{change.field}: {before or '(empty)'} → {after or '(empty)'}"


def version_text(row: PlannedRow, object_name: str) -> str:
    """`new version of price pro_monthly: 10.00 → 12.00 USD/month`: the unit said once when both
    versions share it."""
    version = next(change for change in row.changes if change.field == VERSION_CHANGE)
    before, after = version.before or "", version.after or ""
    amount_before, _, unit_before = before.partition(" ")
    unit_after = after.partition(" ")[2]
    change = f"{amount_before} → {after}" if unit_before == unit_after else f"{before} → {after}"
    return f"new version of {object_name} {row.candidate.key_value}: {change}"


def _shortened(text: str, width: int = CREATE_VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def created_text(changes: list[FieldChange], privacy: _Privacy, object_type: StripeObjectType) -> str:
    """`create — 10.00 USD/month; product: prod_pro; +3 more`: the object's version (the fields it
    says, such as amount and currency, not repeated), then its first fields in the object's own order
    (metadata last), each value shortened, then how many more."""
    shown: list[str] = []
    if object_type.has_versions:
        shown.append(object_type.version_text({change.field: change.after for change in changes}))
        in_version = object_type.immutable_changes({change.field for change in changes}) - set(object_type.references)
        changes = [change for change in changes if change.field not in in_version]
    order = list(object_type.fields)
    changes = sorted(changes, key=lambda change: order.index(change.field) if change.field in order else len(order))
    shown += [_shortened(change_text(change, privacy, created=True)) for change in changes[:CREATE_FIELDS_SHOWN]]
    more = len(changes) - CREATE_FIELDS_SHOWN
    return "create — " + "; ".join(shown + ([f"+{more} more"] if more > 0 else []))


def _what_happens(row: PlannedRow, key_field: str, privacy: _Privacy, object_type: StripeObjectType) -> str:
    """The action, then what it changes: `update — metadata.plan: free → pro`. One cell, not two,
    so that key, action and change fit side by side in the UI's narrow metadata column."""
    object_name = object_type.name
    if row.action in _SKIPS:
        return f"skip — {privacy.reason(row.reason, row)}"
    if row.action is Action.NEW_VERSION:
        others = [change for change in row.changes if change.field != VERSION_CHANGE]
        details = "; ".join(change_text(change, privacy, created=False) for change in others)
        return f"{version_text(row, object_name)} — {details}"
    if not row.changes:
        return "update — no change; written again, as a partition run writes all its rows"
    if row.action is Action.CREATE:
        # The key is the row's first column already; it is a change only when its spelling changes.
        return created_text([change for change in row.changes if change.field != key_field], privacy, object_type)
    return f"{row.action.value} — " + "; ".join(change_text(change, privacy, False) for change in row.changes)


_PREVIEWED = (*WRITES, *_SKIPS)


def _preview_order(row: PlannedRow) -> int:
    if row.action in _SKIPS:
        return _SKIP
    return _WRITE_WITH_CHANGES if row.changes else _WRITE_UNCHANGED


def preview_rows(report: SyncReport) -> list[PlannedRow]:
    """Every row the run writes or skips, the most informative first (the sort keeps the model's order
    within each kind)."""
    return sorted(report.plan.of(*_PREVIEWED), key=_preview_order)


def _preview(report: SyncReport, rows: list[PlannedRow], privacy: _Privacy) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md(
            _lines(nothing_to_change(report.counts(), report.spec.object_type.name), SUMMARY_WIDTH)
        )
    name = report.spec.object_type.name
    id_column = f"stripe_{name}_id"
    # A create's or a new version's id is known once Stripe made it.
    made = {id(outcome.row): outcome.stripe_id for outcome in report.outcomes if outcome.status in _NEW_IDS}
    records = [
        {
            "key": privacy.key(row.candidate.key_value),
            "changes": _what_happens(row, report.spec.key.field, privacy, report.spec.object_type),
            id_column: made.get(id(row), row.stripe_id),
        }
        for row in rows
    ]
    return metadata_table(
        records,
        ("key", "The row's mapping key, as in the model"),
        ("changes", "create, update or skip, then field: before → after for the fields that change"),
        (id_column, f"The Stripe {name} updated, or created by this run"),
    )


_NEW_IDS = ("created", "new_version")


def nothing_to_change(counts: dict[str, int], object_name: str) -> str:
    return f"nothing to change: {_plural(counts['unchanged'], object_name)} unchanged"


def _problems(
    rows: list[tuple[PlannedRow, str | None, str | None]], privacy: _Privacy, object_name: str
) -> dg.MetadataValue:
    id_column = f"stripe_{object_name}_id"
    records = [
        {
            "key": privacy.key(row.candidate.key_value),
            "reason": privacy.reason(reason, row),
            id_column: stripe_id,
        }
        for row, stripe_id, reason in rows
    ]
    return metadata_table(
        records,
        ("key", "The row's mapping key, as in the model"),
        ("reason", "Why the row was not written; Stripe's own message when Stripe refused it"),
        (id_column, f"The Stripe {object_name} it would have updated"),
    )


def reason_kind(reason: str) -> str:
    """A reason without the values it quotes (`invalid email: 'x'` -> `invalid email`), to count by."""
    return reason.split(": ", 1)[0].split(", got ", 1)[0]


def _counted(reasons: list[str], about: str) -> dg.MetadataValue:
    return metadata_table(
        [{"reason": reason, "rows": str(n)} for reason, n in Counter(reasons).most_common()],
        ("reason", about),
        ("rows", "Rows with this reason"),
    )


def _lines(text: str, width: int) -> str:
    """Markdown hard line breaks, so that no line is wider than the Overview tab shows."""
    return "  \n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def headline(report: SyncReport, counts: dict[str, int]) -> str:
    """What the run did, in one sentence; a run refused by a guard says so first."""
    if not report.refused:
        return _done(report, counts)
    if report.options.dry_run:
        return f"{_done(report, counts)} A run would be refused by its guards."
    return "Refused by its guards before any write: nothing written to Stripe."


def _done(report: SyncReport, counts: dict[str, int]) -> str:
    name = report.spec.object_type.name
    creates, updates = counts["planned_creates"], counts["planned_updates"]
    versions, archives = counts.get("planned_new_versions", 0), counts.get("planned_archives", 0)
    if not (creates or updates or versions or archives):
        return nothing_to_change(counts, name).capitalize() + "."
    catalog = [
        f"{versions} new {'version' if versions == 1 else 'versions'}" if versions else "",
        f"{archives} to archive" if archives else "",
    ]
    if report.options.dry_run:
        extra = "".join(f", {part}" for part in catalog if part)
        return f"Dry run: would create {creates} and update {_plural(updates, f'Stripe {name}')}{extra}."
    created, updated = counts["created"], counts["updated"]
    done = [f"created {created}" if created else "", f"updated {updated}" if updated else ""]
    written = " and ".join(filter(None, done))
    noun = f"Stripe {name}" if created + updated == 1 else f"Stripe {report.spec.object_type.plural}"
    sentence = f"{written} {noun}" if written else ""
    new_versions, archived = counts.get("new_versions", 0), counts.get("archived", 0)
    made = [
        f"{new_versions} new {'version' if new_versions == 1 else 'versions'}" if new_versions else "",
        f"archived {archived}" if archived else "",
    ]
    failed = _plural(counts["failed"], "write") + " failed" if counts["failed"] else ""
    sentence = "; ".join(filter(None, [sentence, *made, failed]))
    return sentence[0].upper() + sentence[1:] + "."


def _scope(report: SyncReport) -> str:
    options = report.options
    if options.model_slice is not None:
        return f"partition: {options.model_slice.label}, every row written again"
    if options.full_resync:
        return "full resync: every row compared with Stripe"
    return "rows changed since last sync"


def _catalog_facts(counts: dict[str, int], dry_run: bool) -> list[str | None]:
    """New versions and archives, for the syncs that can make them."""
    if dry_run:
        return [
            f"would make {counts['planned_new_versions']} new versions" if "new_versions" in counts else None,
            f"would archive {counts['planned_archives']}" if "archived" in counts else None,
        ]
    return [
        f"{counts['new_versions']} new versions" if "new_versions" in counts else None,
        f"{counts['archived']} archived" if "archived" in counts else None,
    ]


def summary_markdown(headline: str, facts: Iterable[str | None]) -> str:
    """A run's summary: the headline in bold, then its facts (those given) a line each, every line
    as wide as the Overview tab shows at a 1280 px window."""
    items = "\n".join(f"- {_lines(fact, LIST_WIDTH)}" for fact in facts if fact)
    return f"**{_lines(headline, SUMMARY_WIDTH)}**\n\n{items}"


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
        f"{counts['skipped_existing']} skipped: in Stripe already" if "skipped_existing" in counts else None,
        *_catalog_facts(counts, dry_run),
        # The guards that set a limit, each naming its counts and verdict.
        *(verdict.text for verdict in report.guards if verdict.limit is not None),
        f"{_plural(counts['rows_read'], 'row')} in {report.spec.model}",
        f"Stripe {report.account}" if report.account else None,
        "dry run: nothing written" if dry_run else "not a dry run",
        _scope(report),
        _plural(counts["stripe_api_calls"], "Stripe API call"),
        f"preview: showing {shown} of {total}; all {total}: the SQL in {ALL_ROWS_SQL}"
        if total and report.changes_query
        else None,
    ]
    return summary_markdown(headline(report, counts), facts)


def _links(stripe_ids: list[str], object_url: Callable[[str], str | None], object_name: str) -> str:
    if not stripe_ids:
        return f"No {object_name} was written in this run."
    urls = {stripe_id: object_url(stripe_id) for stripe_id in stripe_ids}
    if None in urls.values():
        return "A local Stripe server, without a dashboard to link to: " + ", ".join(stripe_ids)
    return "\n".join(f"- [{stripe_id}]({url})" for stripe_id, url in urls.items())


def report_metadata(report: SyncReport, object_url: Callable[[str], str | None]) -> dict[str, dg.MetadataValue]:
    """`object_url` gives an object's page in Stripe's dashboard, or None without a dashboard."""
    object_type = report.spec.object_type
    name = object_type.name
    counts = report.counts()
    privacy = _Privacy(report)
    previewed = preview_rows(report)
    rejected = report.plan.of(Action.REJECT)
    failed = [o for o in report.outcomes if o.status == "failed"]
    skipped = report.plan.of(*_SKIPS)
    metadata: dict[str, dg.MetadataValue] = {
        "summary": dg.MetadataValue.md(summary(report, counts, min(len(previewed), PREVIEW_ROWS), len(previewed))),
        "preview": _preview(report, previewed, privacy),
    }
    if previewed and report.changes_query:
        metadata[ALL_ROWS_SQL] = dg.MetadataValue.text(report.changes_query)
    if rejected:
        metadata["rejected_rows"] = _problems([(row, row.stripe_id, row.reason) for row in rejected], privacy, name)
        kinds = [reason_kind(problem) for row in rejected for problem in (row.reason or "").split("; ")]
        metadata["rejection_reasons"] = _counted(kinds, "The kind of problem")
    if failed:
        metadata["failed_rows"] = _problems([(o.row, o.stripe_id, o.error) for o in failed], privacy, name)
        metadata["failure_reasons"] = _counted([o.error or "" for o in failed], "Stripe's message")
    if skipped:
        metadata["skipped_rows"] = _problems([(row, row.stripe_id, row.reason) for row in skipped], privacy, name)
    duplicates = [row for row in report.plan.rows if row.stripe_duplicates]
    if duplicates:
        metadata["stripe_duplicates"] = metadata_table(
            [
                {
                    "key": privacy.key(row.candidate.key),
                    f"stripe_{name}_ids": ", ".join(row.stripe_duplicates),
                    "decision": f"used {row.stripe_id}" if row.stripe_id else "rejected",
                }
                for row in duplicates
            ],
            ("key", ""),
            (f"stripe_{name}_ids", f"Every Stripe {name} with this key"),
            ("decision", "By the sync's duplicates_in_stripe policy"),
        )
    written = [o.stripe_id for o in report.outcomes if o.status != "failed" and o.stripe_id][:LINKS]
    metadata[f"stripe_{object_type.plural}"] = dg.MetadataValue.md(_links(written, object_url, name))
    metadata |= {name: dg.MetadataValue.int(value) for name, value in counts.items()}
    metadata |= {
        "stripe_account": dg.MetadataValue.text(str(report.account)),
        "dry_run": dg.MetadataValue.bool(report.options.dry_run),
        "full_resync": dg.MetadataValue.bool(report.options.full_resync),
    }
    if report.plan.lookup:
        metadata["stripe_lookup"] = dg.MetadataValue.text(report.plan.lookup)
    return metadata
