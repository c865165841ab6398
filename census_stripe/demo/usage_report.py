"""What the demo prints of a usage sync's last run, read back from the Dagster instance: a line per
partition (day) with its counts and what it billed, then why rows were rejected, with the first of
them. A backfill records each partition's own materialization (orchestration/meter_event_asset.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster import DagsterEventType

# The run's counts, its partitions' summed (the Stripe calls are the run's, on each partition).
SUMMED = ("rows_read", "planned_events", "accepted", "already_sent", "rejected")
ROWS_SHOWN = 5  # rejected rows in the terminal; the run's metadata in the UI has more
# Per day: the counts shown, by metadata name, under their column's title.
DAY_COLUMNS = {"rows_read": "rows", "accepted": "sent", "already_sent": "already sent", "rejected": "rejected"}


def last_run_partitions(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[dg.AssetMaterialization]:
    """The materializations of the asset's latest run: one per partition it covered, by partition."""
    latest = instance.get_latest_materialization_event(asset_key)
    if latest is None:
        return []
    found = [
        entry.asset_materialization
        for entry in instance.all_logs(latest.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization and entry.asset_materialization.asset_key == asset_key
    ]
    return sorted(found, key=lambda materialization: materialization.partition or "")


def _records(value: object) -> Sequence[Mapping]:
    return [record.data for record in value.records] if isinstance(value, dg.TableMetadataValue) else []


def _billed(metadata: Mapping) -> str:
    """`api_calls 12,345`: each meter's units billed in the partition."""
    return (
        ", ".join(f"{meter['meter']} {meter['units']}" for meter in _records(metadata.get("billed_per_meter"))) or "-"
    )


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def usage_lines(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[str]:
    """The run's counts (its partitions' summed), a line per partition, where the whole record is
    kept, then why rows were rejected."""
    materializations = last_run_partitions(instance, asset_key)
    if not materializations:
        return ["  not run yet"]
    partitions: list[dict] = [{name: value.value for name, value in m.metadata.items()} for m in materializations]
    first = partitions[0]
    totals = [f"  {name:>18}: {sum(int(metadata.get(name, 0)) for metadata in partitions)}" for name in SUMMED]
    table = [
        ["partition", *DAY_COLUMNS.values(), "billed (units)"],
        *(
            [m.partition or "(all)", *(str(metadata.get(name, "-")) for name in DAY_COLUMNS), _billed(metadata)]
            for m, metadata in zip(materializations, partitions, strict=True)
        ),
    ]
    return [
        *totals,
        f"  {'stripe_api_calls':>18}: {first.get('stripe_api_calls')}",
        *_aligned(table),
        f"  Stripe account {first.get('stripe_account')}; every event sent: {first.get('ledger')}",
        f"  billed per customer and day: {first.get('billed_view')}",
        *rejection_lines(partitions),
    ]


def _day(record: Mapping) -> str:
    return str(record.get("timestamp") or "no timestamp")[:10]


def rejection_lines(partitions: Sequence[Mapping]) -> list[str]:
    """The reasons rows were rejected over all partitions, most common first, then the first rows."""
    reasons: Counter[tuple[str, str]] = Counter()
    rejected: list[Mapping] = []
    for metadata in partitions:
        for record in _records(metadata.get("rejection_reasons")):
            reasons[(record["column"], record["reason"])] += int(record["rows"])
        rejected += _records(metadata.get("rejected_rows"))
    if not reasons:
        return []
    lines = [f"  rejected {sum(reasons.values())} rows before any call. Why:"]
    lines += [f"    {n} x {column}: {reason}" for (column, reason), n in reasons.most_common()]
    lines.append("  The first rows:")
    lines += [
        # A table leaves out a column empty in all its rows: the customer's, when every key is missing.
        f"    {record.get('customer') or '(no customer key)'}, {_day(record)}: {record['column']}: {record['reason']}"
        for record in rejected[:ROWS_SHOWN]
    ]
    if len(rejected) > ROWS_SHOWN or sum(reasons.values()) > len(rejected):
        lines.append("    ... and more: the run's metadata in the UI, and the table sync_rejections")
    return lines
