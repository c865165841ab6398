"""What a meter event sync will do with each usage row, decided in one query inside the warehouse.

Every row of the model (or of the partition) gets its event key (`event_key_sql`: a digest of the
event name and the row's identity values, nothing else), its Stripe customer, and a verdict against
the ledger of the Stripe account, whichever sync sent the event:

    new          never sent: queue it
    sent         Stripe has it with this value: nothing to do
    changed      Stripe has it with another value, itself valid: report it (or correct it, if the
                 sync opts in); an empty, non-numeric or refused negative value is rejected instead
    resend       sent by a run that did not see the answer, less than RESEND_WITHIN ago: send it
                 again under the same identifier; Stripe drops it if it has it
    unconfirmed  the same, but Stripe's 24-hour deduplication has passed: report it, never resend;
                 or a correction whose cancel got no answer until Stripe could no longer take it
    correcting   a correction a run began (correct_changed) and did not finish: finish it, its
                 cancel first, then its new value
    duplicate, no_identity, customer_deleted, no_customer, not_a_customer_id, no_value, bad_value, negative_value,
    no_timestamp, bad_timestamp, too_old, in_future: rejected before any call, with a reason

Every check is a plain comparison or a pattern, never a cast that may fail: a value such as `n/a`
is a rejection on every warehouse, not an error that stops the run (TRY_CAST exists in DuckDB only;
sqlglot writes a plain CAST for PostgreSQL and Snowflake).

A rerun of a day whose events are all sent reads the partition once and sends nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

import sqlglot
from sqlglot import exp

from census_stripe.plan.keys import key_sql
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import MeterEventSettings, MeterEventSpec
from census_stripe.warehouse.base import Relation, literal
from census_stripe.warehouse.ledger import IN_STRIPE_OR_CORRECTING
from census_stripe.warehouse.state import StateStatus

# Stripe: a timestamp within the past 35 days, at most 5 minutes ahead. The oldest events are kept
# an hour clear of the edge, so that one does not leave the window while its run sends.
STRIPE_PAST_WINDOW = timedelta(days=35)
PAST_MARGIN = timedelta(hours=1)
STRIPE_FUTURE_WINDOW = timedelta(minutes=5)
# What Stripe takes as a meter event's value (a decimal number), and what the run sends: the value as text.
DECIMAL_VALUE = r"^-?[0-9]+(\.[0-9]+)?$"
# Stripe deduplicates identifiers for 24 hours; an event in doubt is sent again only well inside that.
RESEND_WITHIN = timedelta(hours=23)

NEW, SENT, CHANGED, RESEND, UNCONFIRMED = "new", "sent", "changed", "resend", "unconfirmed"
CORRECTING = "correcting"
REJECTIONS = {
    "duplicate": "several rows share this identity: make meter_event.identity name the columns that tell them apart",
    "no_identity": "empty, and part of the event's identity",
    "customer_deleted": "the customer was deleted in Stripe (its customer sync found it gone): no usage is sent to it",
    "no_customer": "no Stripe customer for this key in the customer sync (not synced yet, or rejected there)",
    "not_a_customer_id": "not a Stripe customer id (cus_...)",
    "no_value": "the value is empty",
    "bad_value": "the value is not a decimal number (digits, an optional '-' and '.')",
    "negative_value": "the value is negative (set meter_event.allow_negative_values to send credits)",
    "no_timestamp": "the timestamp is empty",
    "bad_timestamp": "the timestamp is text that is no ISO date or date and time without an offset",
    "too_old": "older than Stripe accepts (35 days)",
    "in_future": "more than 5 minutes in the future, which Stripe refuses",
}

# The column each rejection is about, by the setting that names it (no_identity's: the row's empty one).
_REJECTED_SETTING = {
    "customer_deleted": "customer",
    "no_customer": "customer",
    "not_a_customer_id": "customer",
    "no_value": "value",
    "bad_value": "value",
    "negative_value": "value",
    "no_timestamp": "timestamp",
    "bad_timestamp": "timestamp",
    "too_old": "timestamp",
    "in_future": "timestamp",
}


def rejected_column(meter: MeterEventSettings, verdict: str, empty_column: str | None = None) -> str:
    """The model column a rejection is about, as a person finds it in the sync file."""
    if verdict == "no_identity":
        return empty_column or ", ".join(meter.identity)
    if verdict == "duplicate":
        return ", ".join(meter.identity)
    setting = _REJECTED_SETTING[verdict]
    return {
        "customer": meter.customer.column,
        "value": meter.value_column,
        "timestamp": meter.timestamp_column,
    }[setting]


class ColumnKind(Enum):
    """What a model column holds, as far as an event's time and identity are concerned."""

    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    TIMESTAMP = "timestamp"  # no time zone: read as UTC
    TIMESTAMP_TZ = "timestamp_tz"  # an instant


_NUMBER_TYPES = re.compile(
    r"(U?(TINY|SMALL|BIG|HUGE)?INT(EGER|2|4|8|64)?|DECIMAL|NUMERIC|BIGNUMERIC|NUMBER|FLOAT(4|8|64)?|DOUBLE|REAL)\b"
)


def column_kind(data_type: str, dialect: str) -> ColumnKind:
    """The kind of a column of `data_type`, as the warehouse's information schema names it:
    `timestamp with time zone` (PostgreSQL, DuckDB), `TIMESTAMP_TZ`/`TIMESTAMP_LTZ` (Snowflake) and
    BigQuery's `TIMESTAMP` are instants; `timestamp without time zone`, `TIMESTAMP_NTZ`, `DATETIME` are not."""
    kind = data_type.upper().strip()
    instant = kind.startswith(("TIMESTAMPTZ", "TIMESTAMP_TZ", "TIMESTAMP_LTZ")) or (
        "WITH TIME ZONE" in kind and "WITHOUT" not in kind
    )
    if instant or (dialect == "bigquery" and kind == "TIMESTAMP"):
        return ColumnKind.TIMESTAMP_TZ
    if kind.startswith(("TIMESTAMP", "DATETIME")):
        return ColumnKind.TIMESTAMP
    if kind == "DATE":
        return ColumnKind.DATE
    if _NUMBER_TYPES.match(kind):
        return ColumnKind.NUMBER
    return ColumnKind.TEXT


def column_kinds(types: Mapping[str, str], dialect: str) -> dict[str, ColumnKind]:
    """Column name (as stored) -> its kind, from `Warehouse.column_types`."""
    return {name: column_kind(data_type, dialect) for name, data_type in types.items()}


# A timestamp written as text: an ISO date, or date and time, without an offset (or `Z`); read as UTC.
TEXT_MOMENT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?Z?)?$"


def utc_moment(value: exp.Expression, kind: ColumnKind) -> exp.Expression:
    """`value` as a timestamp without time zone, in UTC, whatever the session's time zone: an instant
    converted to UTC, a date at its midnight, a naive timestamp (or one written as text) as it is,
    read as UTC. Text that is no such timestamp is NULL."""
    if kind is ColumnKind.TIMESTAMP_TZ:
        return exp.cast(exp.AtTimeZone(this=value, zone=exp.Literal.string("UTC")), "timestamp")
    if kind is ColumnKind.TEXT:
        text = exp.RegexpLike(this=_text(value.copy()), expression=exp.Literal.string(TEXT_MOMENT))
        without_z = exp.func("replace", _text(value), exp.Literal.string("Z"), exp.Literal.string(""))
        return exp.Case().when(text, exp.cast(without_z, "timestamp"))
    return exp.cast(value, "timestamp")


# Between the parts of an event key's text: a control character no value is expected to hold.
KEY_SEPARATOR = "\x1f"


def _template(duckdb_sql: str, value: exp.Expression) -> exp.Expression:
    """`duckdb_sql` with `value` in place of the column `v`."""
    return sqlglot.parse_one(duckdb_sql, read="duckdb").transform(
        lambda node: value.copy() if isinstance(node, exp.Column) and node.name == "v" else node
    )


def _digits(part: str, moment: exp.Expression, width: int) -> exp.Expression:
    """A part of `moment` as `width` digits: EXTRACT gives numbers, which no warehouse writes its
    own way, where casting a date or timestamp to text follows the session (PostgreSQL's DateStyle,
    Snowflake's output formats)."""
    number = f"CAST(FLOOR(EXTRACT({part} FROM v)) AS BIGINT)"
    if part == "MICROSECOND":  # the seconds' too, in DuckDB and PostgreSQL: keep the fraction
        number = f"({number} % 1000000)"
    return _template(f"LPAD(CAST({number} AS TEXT), {width}, '0')", moment)


def _joined(parts: list[exp.Expression]) -> exp.Expression:
    return functools.reduce(lambda left, right: exp.DPipe(this=left, expression=right), parts)


def canonical_text(value: exp.Expression, kind: ColumnKind) -> exp.Expression:
    """An identity value as one text on every warehouse, in every session: a timestamp as UTC
    ISO-8601, `2026-03-01T12:00:00.500000Z`; a date as `2026-03-01`; a number in decimal, without
    trailing zeros or float noise (`1.5`, `42`, `0.1`; at most 9 decimals); text as it is."""
    if kind is ColumnKind.NUMBER:
        return _template(r"REGEXP_REPLACE(CAST(CAST(v AS DECIMAL(38, 9)) AS TEXT), '\.?0+$', '')", value)
    if kind is ColumnKind.TEXT:
        return _text(value)
    moment = utc_moment(value, kind)
    if kind is ColumnKind.DATE:
        return day_text(moment)
    clock: list[exp.Expression | str] = ["T", _digits("HOUR", moment, 2), ":", _digits("MINUTE", moment, 2), ":"]
    clock += [_digits("SECOND", moment, 2), ".", _digits("MICROSECOND", moment, 6), "Z"]
    return exp.DPipe(this=day_text(moment), expression=_parts(clock))


def day_text(moment: exp.Expression) -> exp.Expression:
    """The UTC day of `moment` (`utc_moment`) as `2026-03-01`, on every warehouse."""
    return _parts([_digits("YEAR", moment, 4), "-", _digits("MONTH", moment, 2), "-", _digits("DAY", moment, 2)])


def _parts(parts: list[exp.Expression | str]) -> exp.Expression:
    return _joined([part if isinstance(part, exp.Expression) else exp.Literal.string(part) for part in parts])


def event_key_sql(event_name: exp.Expression, identity: list[exp.Expression]) -> exp.Func:
    """An event's key, and its identifier in Stripe: md5 of the event name and the canonical texts of
    its identity values, joined by KEY_SEPARATOR; NULL when any is NULL. Nothing else goes in: not
    the sync's name or folder, nor the warehouse, so a renamed sync's events keep their identifiers."""
    separator = exp.Literal.string(KEY_SEPARATOR)
    parts: list[exp.Expression] = [event_name]
    for part in identity:
        parts += [separator.copy(), part]
    return exp.func("md5", _joined(parts))


def legacy_key_sql(sync_name: str, identity: list[exp.Expression]) -> exp.Func:
    """The key versions before `event_key_sql` gave an event: a digest of the sync's name and its
    identity values cast to text in the session. Only to find the events a ledger holds under it."""
    return exp.func(
        "md5", exp.func("concat_ws", exp.Literal.string(KEY_SEPARATOR), exp.Literal.string(sync_name), *identity)
    )


@dataclass(frozen=True)
class CustomerSource:
    """Where a usage row's customer id comes from: a customer sync's writeback, or the row itself."""

    sync_name: str | None = None  # None: the column holds cus_ ids
    key_field: str | None = None  # the customer sync's key field (how its keys are normalized)
    stripe_resource: str | None = None  # the resource the customer sync writes through


def _column(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table, quoted=True)


def _text(expression: exp.Expression) -> exp.Expression:
    return exp.cast(expression, "text")


def _is_null(expression: exp.Expression) -> exp.Expression:
    return exp.Is(this=expression, expression=exp.Null())


def events_query(
    spec: MeterEventSpec,
    model: Relation,
    where: ModelSlice | None,
    state: Relation,
    ledger: Relation,
    account: str,
    customers: CustomerSource,
    customer_account: str,
    now: datetime,
    kinds: Mapping[str, ColumnKind],
    legacy_sync: str | None = None,
    partitions: Sequence[tuple[str, ModelSlice]] = (),
) -> str:
    """Every usage row with its event, its ledger entry and its verdict, in DuckDB's SQL.

    `customer_account`: the account whose writeback names the customers; the events' own, unless
    the customer sync writes through another Stripe resource. `kinds`: the model's columns
    (`column_kinds`), so that every time is read as the same instant on every warehouse.
    `legacy_sync`: the sync whose ledger rows still carry keys of an earlier version
    (`legacy_key_sql`); they are found under those keys too, and the result names them (`legacy_key`).
    `partitions`: the partitions `where` covers, by key; the result names each row's (`partition_key`)."""

    def kind(name: str) -> ColumnKind:
        return kinds.get(name, ColumnKind.TEXT)

    meter = spec.meter_event
    identity = [canonical_text(_column(name, "usage"), kind(name)) for name in meter.identity]
    event_name = (
        _text(_column(meter.event_name_column, "usage"))
        if meter.event_name_column
        else exp.Literal.string(meter.event_name or "")
    )
    customer_value = _text(_column(meter.customer.column, "usage"))
    value = _text(_column(meter.value_column, "usage"))
    rows = exp.select(
        exp.alias_(event_key_sql(event_name.copy(), identity), "event_key"),
        exp.alias_(event_name, "event_name"),
        exp.alias_(utc_moment(_column(meter.timestamp_column, "usage"), kind(meter.timestamp_column)), "event_time"),
        exp.alias_(exp.Not(this=_is_null(_column(meter.timestamp_column, "usage"))), "timestamp_given"),
        exp.alias_(exp.func("trim", value), "value"),
        exp.alias_(exp.or_(*(_is_null(part.copy()) for part in [event_name, *identity])), "identity_missing"),
        exp.alias_(_empty_column(meter, event_name, identity), "empty_column"),
        exp.alias_(exp.func("trim", customer_value.copy()), "customer_key"),
        exp.alias_(_partition_of(where, partitions, kind), "partition_key"),
    ).from_(exp.alias_(model.table(), "usage"))
    if legacy_sync:
        cast_identity = [_text(_column(name, "usage")) for name in meter.identity]
        rows = rows.select(exp.alias_(legacy_key_sql(legacy_sync, cast_identity), "former_key"))
    if customers.sync_name:
        assert customers.key_field, "a customer sync has a key field"
        state_rows = exp.and_(
            _column("sync_name", "customer_state").eq(exp.Literal.string(customers.sync_name)),
            _column("stripe_account", "customer_state").eq(exp.Literal.string(customer_account)),
            _column("customer_key", "customer_state").eq(key_sql(customers.key_field, customer_value)),
        )
        # The customer sync found the customer it had written deleted in Stripe (and, under Update
        # Only, made none anew): the state keeps its former id, which no usage may bill.
        deleted = exp.and_(
            _column("status", "customer_state").eq(exp.Literal.string(StateStatus.NOT_FOUND.value)),
            exp.Not(this=_is_null(_column("stripe_customer_id", "customer_state"))),
        )
        rows = rows.select(
            exp.alias_(_column("stripe_customer_id", "customer_state"), "stripe_customer_id"),
            exp.alias_(exp.false(), "customer_malformed"),
            exp.alias_(exp.func("coalesce", deleted, exp.false()), "customer_deleted"),
        ).join(exp.alias_(state.table(), "customer_state"), on=state_rows, join_type="left")
    else:
        trimmed = exp.func("trim", customer_value)
        rows = rows.select(
            exp.alias_(trimmed, "stripe_customer_id"),
            exp.alias_(
                exp.Not(this=exp.func("starts_with", trimmed.copy(), exp.Literal.string("cus_"))), "customer_malformed"
            ),
            exp.alias_(exp.false(), "customer_deleted"),  # the model names ids; nothing here knows of a deletion
        )
    if where:
        moment = utc_moment(_column(where.column, "usage"), kind(where.column))
        rows = rows.where(where.condition(moment).transform(lambda node: _in_usage(node)))
    return _verdicts(rows.sql("duckdb"), ledger, account, now, meter.allow_negative_values, legacy_sync)


def _empty_column(meter: MeterEventSettings, event_name: exp.Expression, identity: list[exp.Expression]) -> exp.Case:
    """The first of the event name's and identity's columns that is empty in the row, by name:
    what a `no_identity` rejection names."""
    named = [(meter.event_name_column, event_name)] if meter.event_name_column else []
    named += list(zip(meter.identity, identity, strict=True))
    case = exp.Case()
    for name, part in named:
        case = case.when(_is_null(part.copy()), exp.Literal.string(name))
    return case


def _partition_of(
    where: ModelSlice | None, partitions: Sequence[tuple[str, ModelSlice]], kind: Callable[[str], ColumnKind]
) -> exp.Expression:
    """The key of the row's partition among the run's, so that a run over many reports each: found
    by the partition column's value, or for a time window by its UTC day (partitions start at a
    midnight, so a day lies in one). NULL for a run over the whole model."""
    if where is None or not partitions:
        return exp.cast(exp.Null(), "text")
    column = _column(where.column, "usage")
    bucket = _text(column) if where.values else day_text(utc_moment(column, kind(where.column)))
    case = exp.Case()
    for key, rows in partitions:
        case = case.when(rows.bucket_condition(bucket.copy()), exp.Literal.string(key))
    return case


def _in_usage(node: exp.Expression) -> exp.Expression:
    """The slice's column, read from the model (aliased `usage`) rather than the joined state."""
    if isinstance(node, exp.Column) and not node.table:
        return exp.column(node.name, "usage", quoted=True)
    return node


LEDGER_FIELDS = (
    "sent_identifier",
    "sent_value",
    "attempted_at",
    "accepted_at",
    "cancel_identifier",
    "cancel_sent_at",
    "cancel_attempted_at",
)


def _verdicts(
    rows_sql: str, ledger: Relation, account: str, now: datetime, allow_negative: bool, legacy_sync: str | None
) -> str:
    def moment(delta: timedelta) -> str:
        return literal(now + delta).sql("duckdb")

    # The account's events, whichever sync sent them; a row queued by a run that died (never
    # attempted) is no event in Stripe, unless a correction left it (its former value is cancelled).
    of_account = f"stripe_account = {literal(account).sql('duckdb')} AND {IN_STRIPE_OR_CORRECTING}"
    ledger_rows = (
        "SELECT event_key, identifier AS sent_identifier, value AS sent_value, attempted_at, accepted_at, "
        f"cancel_identifier, cancel_sent_at, cancel_attempted_at FROM {ledger.table().sql('duckdb')} WHERE {of_account}"
    )
    joins = f"LEFT JOIN ({ledger_rows}) AS sent ON sent.event_key = counted.event_key"
    fields = ", ".join(f"sent.{field} AS {field}" for field in LEDGER_FIELDS)
    migrated = ""
    if legacy_sync:
        legacy_rows = f"{ledger_rows} AND sync_name = {literal(legacy_sync).sql('duckdb')} AND key_scheme IS NULL"
        joins += f" LEFT JOIN ({legacy_rows}) AS legacy ON legacy.event_key = counted.former_key"
        fields = ", ".join(f"COALESCE(sent.{field}, legacy.{field}) AS {field}" for field in LEDGER_FIELDS)
        migrated = ", CASE WHEN sent.event_key IS NULL THEN legacy.event_key END AS legacy_key"

    negative = "" if allow_negative else "\n    WHEN value LIKE '-%' THEN 'negative_value'"

    return f"""
WITH usage_rows AS ({rows_sql}),
counted AS (SELECT *, COUNT(*) OVER (PARTITION BY event_key) AS copies FROM usage_rows),
judged AS (SELECT counted.*, {fields}{migrated} FROM counted {joins})
SELECT event_key, event_name, stripe_customer_id, value, event_time, {", ".join(LEDGER_FIELDS)},
  customer_key, empty_column, partition_key{", legacy_key" if legacy_sync else ""},
  CASE
    WHEN identity_missing THEN 'no_identity'
    WHEN copies > 1 THEN 'duplicate'
    WHEN cancel_sent_at IS NOT NULL AND cancel_attempted_at <= {moment(-RESEND_WITHIN)} THEN '{UNCONFIRMED}'
    WHEN cancel_identifier IS NOT NULL OR (sent_identifier IS NOT NULL AND attempted_at IS NULL) THEN '{CORRECTING}'
    WHEN accepted_at IS NOT NULL AND sent_value IS NOT DISTINCT FROM value THEN '{SENT}'
    WHEN attempted_at IS NOT NULL AND accepted_at IS NULL AND attempted_at > {moment(-RESEND_WITHIN)} THEN '{RESEND}'
    WHEN attempted_at IS NOT NULL AND accepted_at IS NULL THEN '{UNCONFIRMED}'
    WHEN value IS NULL OR value = '' THEN 'no_value'
    WHEN NOT REGEXP_MATCHES(value, '{DECIMAL_VALUE}') THEN 'bad_value'{negative}
    WHEN customer_deleted THEN 'customer_deleted'
    WHEN accepted_at IS NOT NULL THEN '{CHANGED}'
    WHEN stripe_customer_id IS NULL OR stripe_customer_id = '' THEN 'no_customer'
    WHEN customer_malformed THEN 'not_a_customer_id'
    WHEN event_time IS NULL AND timestamp_given THEN 'bad_timestamp'
    WHEN event_time IS NULL THEN 'no_timestamp'
    WHEN event_time < {moment(PAST_MARGIN - STRIPE_PAST_WINDOW)} THEN 'too_old'
    WHEN event_time > {moment(STRIPE_FUTURE_WINDOW)} THEN 'in_future'
    ELSE '{NEW}'
  END AS verdict
FROM judged
"""
