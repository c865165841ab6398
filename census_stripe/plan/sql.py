"""The warehouse half of the plan: SQL that finds the rows worth looking at.

The model is joined to the sync's state table on a hash of the mapped columns, so rows that did not
change since Stripe last accepted them never leave the warehouse. The SQL is built as a sqlglot
tree and rendered per dialect; every identifier that comes from a sync file is quoted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

import sqlglot
from sqlglot import exp

from census_stripe.objects import foreign_id_prefixes
from census_stripe.objects.base import StripeObjectType
from census_stripe.plan.keys import LOWER_CASED_FIELDS, key_sql, legacy_key_sql
from census_stripe.spec import SyncSpec
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.state import WRITTEN_STATUSES, StateStatus, of_sync

# Both separators are control characters no warehouse value is expected to contain, so that
# ("a", "bc") and ("ab", "c") hash differently, and so do NULL and "".
FIELD_SEPARATOR = "\x1f"
NULL_MARKER = "\x1e"

# Result column names; model columns are read under positional aliases so that any column name
# (a keyword, a quote, mixed case) survives every dialect.
KEY = "__key"
ROW_HASH = "__row_hash"
KEY_ROWS = "__key_rows"
STATE_ROWS = "__state_rows"
STATE_PREFIX = "__state_"
FORMER_KEY = "__former_key"


def value_alias(position: int) -> str:
    return f"c{position}"


def mapping_fingerprint(spec: SyncSpec) -> str:
    """Changes whenever what a row turns into changes, so that a new mapping re-examines every row."""
    shape = {"mapping": spec.columns_by_field, "constants": spec.constant_values}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _text(column: str) -> exp.Expression:
    return exp.cast(exp.column(column, quoted=True), "text")


def key_expression(spec: SyncSpec, dialect: str | None = None) -> exp.Expression:
    """The key of a model row, as `plan.keys` defines it (Python's twin: keys.normalize_key)."""
    return key_sql(spec.key.field, _text(spec.key.column), dialect)


def row_hash_expression(spec: SyncSpec) -> exp.Func:
    parts: list[exp.Expression] = [exp.Literal.string(mapping_fingerprint(spec))]
    for column in spec.columns:
        parts.append(exp.Literal.string(FIELD_SEPARATOR))
        parts.append(exp.Coalesce(this=_text(column), expressions=[exp.Literal.string(NULL_MARKER)]))
    return exp.func("MD5", exp.Concat(expressions=parts, safe=True))


@dataclass(frozen=True)
class ModelSlice:
    """Part of the model, for a partitioned sync: rows whose `column` lies in [start, end), or
    whose `column` is one of `values`."""

    column: str
    start: datetime | None = None
    end: datetime | None = None
    values: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The rows in words: `region in eu, us`, `day from 2024-05-01 to 2024-05-02`."""
        if self.values:
            return f"{self.column} in {', '.join(self.values)}"
        return f"{self.column} from {self.start:%Y-%m-%d} to {self.end:%Y-%m-%d}"

    def bucket_condition(self, bucket: exp.Expression) -> exp.Condition:
        """Whether a row is in the slice, by `bucket`: its value, or for a time window its UTC day as
        text (`2026-03-01`; ISO days compare as text)."""
        if self.values:
            return exp.In(this=bucket, expressions=[exp.Literal.string(v) for v in self.values])
        assert self.start is not None and self.end is not None, "a slice has values or a start and an end"
        return exp.and_(
            exp.GTE(this=bucket, expression=exp.Literal.string(f"{self.start:%Y-%m-%d}")),
            exp.LT(this=bucket.copy(), expression=exp.Literal.string(f"{self.end:%Y-%m-%d}")),
        )

    def condition(self, moment_of: exp.Expression | None = None) -> exp.Condition:
        """`moment_of`: the column as a timestamp to compare the bounds with (by default, cast to one)."""
        column = exp.column(self.column, quoted=True)
        if self.values:
            return exp.In(this=exp.cast(column, "text"), expressions=[exp.Literal.string(v) for v in self.values])
        if self.start is None or self.end is None:
            raise ValueError(f"a slice of {self.column} needs values or a start and an end")

        def moment(value: datetime) -> exp.Expression:
            return exp.cast(exp.Literal.string(value.strftime("%Y-%m-%d %H:%M:%S")), "timestamp")

        as_timestamp = moment_of or exp.cast(column, "timestamp")
        return exp.and_(
            exp.GTE(this=as_timestamp, expression=moment(self.start)),
            exp.LT(this=as_timestamp.copy(), expression=moment(self.end)),
        )


def _rows(model: Relation, where: ModelSlice | None) -> exp.Select:
    query = exp.select().from_(model.table())
    return query.where(where.condition()) if where else query


def _model_select(spec: SyncSpec, model: Relation, where: ModelSlice | None, dialect: str) -> exp.Select:
    values = [exp.alias_(_text(column), value_alias(i), quoted=True) for i, column in enumerate(spec.columns)]
    return _rows(model, where).select(
        *values,
        exp.alias_(key_expression(spec, dialect), KEY, quoted=True),
        exp.alias_(row_hash_expression(spec), ROW_HASH, quoted=True),
    )


def _col(name: str, table: str) -> exp.Column:
    """A column of one of the query's aliased tables."""
    return exp.column(name, table, quoted=True)


STATE_COLUMNS = ("stripe_customer_id", "row_hash", "synced_values", "synced_at", "status", "run_id")


def id_of_type(object_type: StripeObjectType, stripe_id: exp.Expression) -> exp.Condition:
    """Whether an id can name an object of `object_type` (Python's twin: `objects.is_id_of`)."""

    def begins(prefix: str) -> exp.Condition:
        start = exp.Substring(
            this=stripe_id.copy(), start=exp.Literal.number(1), length=exp.Literal.number(len(prefix))
        )
        return start.eq(exp.Literal.string(prefix))

    conditions: list[exp.Condition] = [exp.not_(begins(prefix)) for prefix in foreign_id_prefixes(object_type)]
    if not object_type.custom_ids:
        conditions.append(begins(object_type.id_prefix))
    return exp.and_(*conditions)


def sound_state(object_type: StripeObjectType) -> exp.Condition:
    """Whether a state row can be trusted, as far as SQL judges it cheaply: a known status, an id
    of the object's kind, and a key filed as written with its id and row hash. A row that is not is
    read again however the model row changed, and judged, with the rest, by `plan.rows`."""
    status, stripe_id = exp.column("status", quoted=True), exp.column("stripe_customer_id", quoted=True)
    missing = exp.or_(stripe_id.is_(exp.Null()), exp.column("row_hash", quoted=True).is_(exp.Null()))
    written = exp.func("COALESCE", status.copy(), exp.Literal.string("")).isin(*(s.value for s in WRITTEN_STATUSES))
    return exp.and_(
        exp.or_(status.copy().is_(exp.Null()), status.copy().isin(*(s.value for s in StateStatus))),
        exp.or_(stripe_id.copy().is_(exp.Null()), id_of_type(object_type, stripe_id)),
        exp.not_(exp.and_(written, missing)),
    )


def changed_rows_query(
    spec: SyncSpec,
    model: Relation,
    state: Relation,
    account: str,
    dialect: str,
    everything: bool = False,
    where: ModelSlice | None = None,
) -> str:
    """Model rows that need a look, with what the state table knows of each in this account.

    A row needs a look when its hash differs from the one Stripe last accepted, when it has no key,
    when its key repeats in the model (so every copy can be rejected), or when its key's state
    cannot be trusted (`sound_state`, or more than one row: the run looks the key up again and
    files one sound row).
    `everything` selects all rows, for a full resync; `where` keeps to a slice of the model (keys
    repeat across the whole model, though). Only the account's own state rows are read: another
    account's Stripe ids mean nothing here. An email key with no state row gets the state row
    filed under its former key, if one is (`FORMER_KEY`: see plan/keys.py, rows.settle_former_keys).

    Memory stays small however large the model: repeated keys are counted from the key column
    alone, the model is compared with narrow (key, hash) state rows, and the wide state columns
    (last synced values) are joined only to the rows that changed.
    """

    one = exp.Literal.number(1)
    repeated_keys = (
        exp.select(
            exp.alias_(key_expression(spec, dialect), KEY, quoted=True),
            exp.alias_(exp.Count(this=exp.Star()), KEY_ROWS, quoted=True),
        )
        .from_(model.table())
        .group_by(key_expression(spec, dialect))
        .having(exp.GT(this=exp.Count(this=exp.Star()), expression=one))
    )
    # A row that cannot be trusted counts as one without a hash: read again.
    trusted_hash = exp.Case().when(sound_state(spec.object_type), exp.column("row_hash", quoted=True))
    last_hashes = (
        exp.select(
            exp.column("customer_key", quoted=True),
            exp.alias_(exp.Min(this=trusted_hash), "row_hash", quoted=True),
            exp.alias_(exp.Count(this=exp.Star()), STATE_ROWS, quoted=True),
        )
        .from_(state.table())
        .where(of_sync(spec.name, account))
        .group_by(exp.column("customer_key", quoted=True))
    )
    changed = (
        exp.select(
            exp.Column(this=exp.Star(), table=exp.to_identifier("m", quoted=True)),
            exp.alias_(exp.Coalesce(this=_col(KEY_ROWS, "r"), expressions=[one]), KEY_ROWS, quoted=True),
            exp.alias_(
                exp.Coalesce(this=_col(STATE_ROWS, "h"), expressions=[exp.Literal.number(0)]), STATE_ROWS, quoted=True
            ),
        )
        .from_(exp.alias_(_model_select(spec, model, where, dialect).subquery(), "m", quoted=True))
        .join(
            exp.alias_(repeated_keys.subquery(), "r", quoted=True),
            on=_col(KEY, "r").eq(_col(KEY, "m")),
            join_type="left",
        )
        .join(
            exp.alias_(last_hashes.subquery(), "h", quoted=True),
            on=_col("customer_key", "h").eq(_col(KEY, "m")),
            join_type="left",
        )
    )
    if not everything:
        changed = changed.where(
            exp.or_(
                exp.Is(this=_col("row_hash", "h"), expression=exp.Null()),
                exp.NEQ(this=_col("row_hash", "h"), expression=_col(ROW_HASH, "m")),
                exp.GT(this=_col(STATE_ROWS, "h"), expression=one),
                exp.Is(this=_col(KEY, "m"), expression=exp.Null()),
                exp.Not(this=exp.Is(this=_col(KEY_ROWS, "r"), expression=exp.Null())),
            )
        )
    # A key with several state rows gets none of them: which one is right cannot be known.
    filed_key = exp.Case().when(_col(STATE_ROWS, "c").eq(one), _col(KEY, "c"))
    former_key = None
    if spec.key.field in LOWER_CASED_FIELDS:
        # A key with no state row may have one filed under the form earlier versions gave it (the
        # database's LOWER). Only such rows compute that form, and the state is joined once, so a
        # run with nothing new pays nothing for it.
        key_value = _col(value_alias(spec.columns.index(spec.key.column)), "c")
        unfiled = exp.and_(_col(STATE_ROWS, "c").eq(exp.Literal.number(0)), _col(KEY_ROWS, "c").eq(one))
        filed_key = filed_key.when(unfiled, legacy_key_sql(spec.key.field, key_value))
        former_key = exp.Case().when(unfiled.copy(), _col("customer_key", "s"))
    join_state = exp.and_(of_sync(spec.name, account, table="s"), _col("customer_key", "s").eq(filed_key))
    query = (
        exp.select(
            exp.Column(this=exp.Star(), table=exp.to_identifier("c", quoted=True)),
            *(exp.alias_(_col(name, "s"), STATE_PREFIX + name, quoted=True) for name in STATE_COLUMNS),
        )
        .from_(exp.alias_(changed.subquery(), "c", quoted=True))
        .join(state.table().as_("s", quoted=True), on=join_state, join_type="left")
    )
    if former_key is not None:
        query = query.select(exp.alias_(former_key, FORMER_KEY, quoted=True))
    return query.sql(dialect=dialect)


def model_keys_query(spec: SyncSpec, model: Relation, keys: list[str], dialect: str) -> str:
    """Which of `keys` some row of the (whole) model has."""
    key = key_expression(spec, dialect)
    wanted = exp.In(this=key.copy(), expressions=[exp.Literal.string(k) for k in keys])
    return exp.select(exp.alias_(key, KEY, quoted=True)).distinct().from_(model.table()).where(wanted).sql(dialect)


def left_keys_query(spec: SyncSpec, model: Relation, state: Relation, account: str, dialect: str) -> str:
    """The state rows of keys no longer in the model that still have a live Stripe object: what
    `archive_missing` archives. Keys archived already are left out. Each row comes with the number
    of state rows its key has (`STATE_ROWS`): a key with several cannot be trusted."""

    model_keys = exp.select(exp.alias_(key_expression(spec, dialect), KEY, quoted=True)).distinct().from_(model.table())
    per_key = exp.Window(this=exp.Count(this=exp.Star()), partition_by=[exp.column("customer_key", quoted=True)])
    sync_rows = (
        exp.select(exp.Star(), exp.alias_(per_key, STATE_ROWS, quoted=True))
        .from_(state.table())
        .where(of_sync(spec.name, account))
    )
    left = exp.and_(_live(), exp.Is(this=_col(KEY, "m"), expression=exp.Null()))
    query = (
        exp.select(_col("customer_key", "s"), *(_col(name, "s") for name in (*STATE_COLUMNS, STATE_ROWS)))
        .from_(exp.alias_(sync_rows.subquery(), "s", quoted=True))
        .join(
            exp.alias_(model_keys.subquery(), "m", quoted=True),
            on=_col(KEY, "m").eq(_col("customer_key", "s")),
            join_type="left",
        )
        .where(left)
    )
    return query.sql(dialect=dialect)


def live_objects_query(spec: SyncSpec, state: Relation, account: str, dialect: str) -> str:
    """How many keys of the sync have an object in Stripe it has not archived: what an archive's
    share is of. A key with several (damaged) state rows counts once."""
    keys = exp.Count(this=exp.Distinct(expressions=[_col("customer_key", "s")]))
    live = exp.and_(of_sync(spec.name, account, table="s"), _live())
    return exp.select(keys).from_(state.table().as_("s", quoted=True)).where(live).sql(dialect=dialect)


def _live() -> exp.Condition:
    """State rows (`s`) whose key has an object in Stripe, not archived."""
    status = _col("status", "s")
    return exp.and_(
        exp.Not(this=exp.Is(this=_col("stripe_customer_id", "s"), expression=exp.Null())),
        exp.or_(
            exp.Is(this=status, expression=exp.Null()),
            exp.NEQ(this=status.copy(), expression=exp.Literal.string(StateStatus.ARCHIVED.value)),
        ),
    )


def row_count_query(model: Relation, dialect: str, where: ModelSlice | None = None) -> str:
    return _rows(model, where).select(exp.alias_(exp.Count(this=exp.Star()), "n", quoted=True)).sql(dialect=dialect)


# An order-independent checksum of many hex hashes, per dialect: no row leaves the warehouse.
_CHECKSUMS = {
    "duckdb": "BIT_XOR(HASH({}))",
    "postgres": "BIT_XOR(('x' || SUBSTR({}, 1, 16))::BIT(64)::BIGINT)",
    "redshift": "SUM(STRTOL(SUBSTRING({}, 1, 8), 16))",
    "snowflake": "HASH_AGG({})",
    "bigquery": "BIT_XOR(FARM_FINGERPRINT({}))",
}


def fingerprint_query(spec: SyncSpec, model: Relation, dialect: str, updated_at_column: str | None = None) -> str:
    """One row that changes whenever the rows the sync would read change: their count, the latest
    `updated_at_column`, and a checksum of every row's hash."""
    row_hash = row_hash_expression(spec).sql(dialect=dialect)
    if dialect not in _CHECKSUMS:
        raise ValueError(f"no checksum for the {dialect} dialect yet (known: {', '.join(_CHECKSUMS)})")
    parts = [
        exp.alias_(exp.Count(this=exp.Star()), "row_count", quoted=True),
        exp.alias_(sqlglot.parse_one(_CHECKSUMS[dialect].format(row_hash), read=dialect), "checksum", quoted=True),
    ]
    if updated_at_column:
        latest = exp.Max(this=exp.cast(exp.column(updated_at_column, quoted=True), "text"))
        parts.append(exp.alias_(latest, "updated_at", quoted=True))
    return exp.select(*parts).from_(model.table()).sql(dialect=dialect)
