"""From a model row to what Stripe should hold for it, or the reason it cannot be sent."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from census_stripe.fields import lookup_field
from census_stripe.plan import keys, sql
from census_stripe.spec import SyncSpec, value_problem
from census_stripe.stripe_api import blank_to_none

# Deliberately loose: one @, something on each side, a dot in the domain, no spaces. Stripe itself
# accepts far worse; this catches what a person would call "not an email".
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class PriorState:
    """What the state table knew of this key before the run."""

    stripe_id: str | None
    row_hash: str | None
    synced_values: dict[str, str | None] | None
    synced_at: datetime | None
    status: str | None = None
    run_id: str | None = None  # the run that last touched this key


@dataclass(frozen=True)
class Candidate:
    """A model row that changed, or was never sent: its desired Stripe values and its history."""

    key: str | None
    key_value: str | None  # as written in the model, for people to read
    values: dict[str, str | None]
    row_hash: str
    key_rows: int
    prior: PriorState | None


def _none_if_missing(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def candidates_from_chunk(spec: SyncSpec, chunk: pd.DataFrame) -> list[Candidate]:
    """Candidates from a chunk of `plan.sql.changed_rows_query` results."""
    positions = {column: sql.value_alias(i) for i, column in enumerate(spec.columns)}
    constants = spec.constant_values
    out = []
    for record in chunk.to_dict("records"):
        record = {name: _none_if_missing(value) for name, value in record.items()}
        values = {field: record[positions[column]] for field, column in spec.columns_by_field.items()}
        values.update(constants)
        for field in {spec.key.field, "email"} & values.keys():
            # Stripe would keep surrounding whitespace; the key ignores it, so the value sent does too.
            values[field] = keys.trim(values[field]) if values[field] else values[field]
        state = {name: record[sql.STATE_PREFIX + name] for name in sql.STATE_COLUMNS}
        prior = None
        if any(value is not None for value in state.values()):
            prior = PriorState(
                stripe_id=state["stripe_customer_id"],
                row_hash=state["row_hash"],
                synced_values=json.loads(state["synced_values"]) if state["synced_values"] else None,
                synced_at=state["synced_at"],
                status=state["status"],
                run_id=state["run_id"],
            )
        out.append(
            Candidate(
                key=record[sql.KEY],
                key_value=record[positions[spec.key.column]],
                values=values,
                row_hash=record[sql.ROW_HASH],
                key_rows=int(record[sql.KEY_ROWS]),
                prior=prior,
            )
        )
    return out


def rejection_reason(spec: SyncSpec, candidate: Candidate) -> str | None:
    """Why this row must not reach Stripe, or None. Every problem is named, not just the first."""
    if candidate.key is None:
        return f"null key: column {spec.key.column!r} is empty"
    problems = []
    if candidate.key_rows > 1:
        problems.append(f"duplicate key: {candidate.key_rows} model rows share {spec.key.field} {candidate.key!r}")
    for field, value in candidate.values.items():
        value = blank_to_none(value)
        if value is None:
            continue
        if field == "email" and not _EMAIL.match(value):
            problems.append(f"invalid email: {value!r}")
            continue
        if problem := value_problem(lookup_field(field), value):
            problems.append(problem)
    return "; ".join(problems) or None
