"""From a model row to what Stripe should hold for it, or the reason it cannot be sent."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from census_stripe.objects import is_id_of
from census_stripe.objects.base import StripeObjectType, blank_to_none
from census_stripe.plan import keys, sql
from census_stripe.spec import SyncSpec
from census_stripe.warehouse.base import is_missing
from census_stripe.warehouse.state import WRITTEN_STATUSES, StateStatus

if TYPE_CHECKING:
    import pandas as pd  # imported where rows are read: loading the code location reads none

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
    status: StateStatus | None = None
    run_id: str | None = None  # the run that last touched this key


@dataclass(frozen=True)
class Candidate:
    """A model row that changed, or was never sent: its desired Stripe values and its history."""

    key: str | None
    key_value: str | None  # as written in the model, for people to read
    values: dict[str, str | None]
    row_hash: str
    key_rows: int  # the model rows with this key: 0 for a key that left the model
    prior: PriorState | None
    # What was wrong with this key's state row(s), which were then ignored: the key is looked up
    # in Stripe again, and the run files one sound row for it.
    state_problem: str | None = None
    # Why a value could not be resolved (a price's product key that its product sync does not know).
    problems: tuple[str, ...] = ()
    # The key its state row was filed under by an older version's rule (keys.legacy_key_sql), when
    # that row is its prior: the run files the row again under `key`.
    former_key: str | None = None


def _none_if_missing(value):
    return None if is_missing(value) else value


def candidates_from_chunk(spec: SyncSpec, chunk: pd.DataFrame) -> list[Candidate]:
    """Candidates from a chunk of `plan.sql.changed_rows_query` results."""
    positions = {column: sql.value_alias(i) for i, column in enumerate(spec.columns)}
    constants = spec.constant_values
    fields = {name: spec.object_type.lookup_field(name) for name in [*spec.columns_by_field, *constants]}
    out = []
    for record in chunk.to_dict("records"):
        record = {name: _none_if_missing(value) for name, value in record.items()}
        values = {field: record[positions[column]] for field, column in spec.columns_by_field.items()}
        values.update(constants)
        for name, value in values.items():
            if value:
                # Stripe stores `USD` as `usd`: compare and send what it gives back.
                values[name] = fields[name].normalize(value)
        for field in {spec.key.field, "email"} & values.keys():
            # Stripe would keep surrounding whitespace; the key ignores it, so the value sent does too.
            values[field] = keys.trim(values[field]) if values[field] else values[field]
        state = {name: record[sql.STATE_PREFIX + name] for name in sql.STATE_COLUMNS}
        prior, problem = None, None
        if int(record[sql.STATE_ROWS]) > 1:
            problem = f"{int(record[sql.STATE_ROWS])} state rows for one key"
        elif any(value is not None for value in state.values()):
            prior, problem = _prior(state, spec.object_type)
        out.append(
            Candidate(
                key=record[sql.KEY],
                key_value=record[positions[spec.key.column]],
                values=values,
                row_hash=record[sql.ROW_HASH],
                key_rows=int(record[sql.KEY_ROWS]),
                prior=prior,
                state_problem=problem,
                former_key=record.get(sql.FORMER_KEY),
            )
        )
    return out


def _prior(state: dict, object_type: StripeObjectType) -> tuple[PriorState | None, str | None]:
    """A state row as what the run knew of its key, or why it cannot be trusted. The rows the SQL
    reads again whatever the model holds (`plan.sql.sound_state`) are judged here too."""
    synced_values, problem = _synced_values(state["synced_values"])
    if problem is not None:
        return None, problem
    try:
        status = StateStatus(state["status"]) if state["status"] else None
    except ValueError:
        return None, f"unknown status {state['status']!r}"
    stripe_id = state["stripe_customer_id"]
    if stripe_id and not is_id_of(object_type, stripe_id):
        return None, f"{stripe_id!r} is not a {object_type.name} id"
    if status in WRITTEN_STATUSES:
        missing = [name for name in ("stripe_customer_id", "row_hash") if not state[name]]
        if missing:
            return None, f"status {status.value} without {' or '.join(missing)}"
    prior = PriorState(
        stripe_id=stripe_id,
        row_hash=state["row_hash"],
        synced_values=synced_values,
        synced_at=state["synced_at"],
        status=status,
        run_id=state["run_id"],
    )
    return prior, None


def settle_former_keys(
    candidates: Iterable[Candidate], held_by_model: Callable[[list[str]], set[str]]
) -> Iterator[Candidate]:
    """Candidates, each keeping a state row found under its former key only when the row is its
    alone: no other model row claims it, and no model row has that key under today's rule
    (`held_by_model` says which of some keys a model row has). Otherwise the row is left where
    it is and the candidate is looked up in Stripe, like a new key.

    The candidates that found one are few (keys filed before an upgrade, matched once), so
    they are held back and come last."""
    claims: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        if candidate.former_key is None:
            yield candidate
        else:
            claims[candidate.former_key].append(candidate)
    held = held_by_model([former for former, claimants in claims.items() if len(claimants) == 1]) if claims else set()
    for former, claimants in claims.items():
        if len(claimants) == 1 and former not in held:
            yield claimants[0]
            continue
        # Several rows claim it, or one row met several state rows under it (damaged state).
        copies = Counter(claimant.key for claimant in claimants)
        for claimant in {claimant.key: claimant for claimant in reversed(claimants)}.values():
            problem = (
                f"{copies[claimant.key]} state rows for its former key {former!r}" if copies[claimant.key] > 1 else None
            )
            yield replace(claimant, prior=None, former_key=None, state_problem=problem or claimant.state_problem)


@dataclass(frozen=True)
class LeftKey:
    """A key the state knows that is no longer in the model."""

    key: str
    stripe_id: str
    prior: PriorState


@dataclass(frozen=True)
class LeftKeys:
    """Keys that left the model: those whose state row is sound, and (key, problem) for each
    whose row(s) cannot be trusted to say which object to archive."""

    sound: list[LeftKey]
    damaged: list[tuple[str, str]]


def left_keys(object_type: StripeObjectType, frame: pd.DataFrame) -> LeftKeys:
    """`plan.sql.left_keys_query` results, judged as the model's rows' state is."""
    sound, damaged = [], {}
    for record in frame.to_dict("records"):
        key = record["customer_key"]
        state = {name: _none_if_missing(record[name]) for name in sql.STATE_COLUMNS}
        rows = int(record[sql.STATE_ROWS])
        prior, problem = (None, f"{rows} state rows for one key") if rows > 1 else _prior(state, object_type)
        if problem is not None:
            damaged[key] = problem
        elif prior is not None and prior.stripe_id:
            sound.append(LeftKey(key, prior.stripe_id, prior))
    return LeftKeys(sound, list(damaged.items()))


def _synced_values(stored: str | None) -> tuple[dict[str, str | None] | None, str | None]:
    """The values last synced, as stored in the state table, or why they cannot be read."""
    if not stored:
        return None, None
    try:
        values = json.loads(stored)
    except ValueError:
        return None, "synced_values is not JSON"
    if not isinstance(values, dict) or not all(v is None or isinstance(v, str) for v in values.values()):
        return None, "synced_values is not an object of text values"
    return values, None


def rejection_reason(spec: SyncSpec, candidate: Candidate) -> str | None:
    """Why this row must not reach Stripe, or None. Every problem is named, not just the first."""
    if candidate.key is None:
        return f"null key: column {spec.key.column!r} is empty"
    problems = list(candidate.problems)
    object_type = spec.object_type
    if candidate.key_rows > 1:
        problems.append(f"duplicate key: {candidate.key_rows} model rows share {spec.key.field} {candidate.key!r}")
    if spec.behavior != "update_only":
        for names in object_type.required_on_create:
            mapped = [name for name in names if name in candidate.values]
            if mapped and not any(blank_to_none(candidate.values[name]) for name in mapped):
                problems.append(f"{' or '.join(mapped)} is empty: Stripe needs it for a {object_type.name}")
    for field, value in candidate.values.items():
        value = blank_to_none(value)
        if value is None:
            continue
        if field == "email" and not _EMAIL.match(value):
            problems.append(f"invalid email: {value!r}")
            continue
        if problem := object_type.lookup_field(field).problem(value):
            problems.append(problem)
    return "; ".join(problems) or None
