"""The plan: for every row that needs a look, what to do in Stripe and why. No I/O here.

A row is created, updated (only the fields that differ), left unchanged, rejected with a reason,
skipped because Stripe has no such object (Update Only) or already has it (Create Only), or, for
an object whose immutable fields changed (a price's amount), replaced by a new version. Keys that
left the model are archived when the sync asks for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from census_stripe.objects.base import StripeObjectType, blank_to_none
from census_stripe.plan.lookup import LookupResult
from census_stripe.plan.rows import Candidate, LeftKeys, PriorState, rejection_reason
from census_stripe.spec import SyncSpec
from census_stripe.stripe_client.values import StripeObject


class Action(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    REJECT = "reject"
    SKIP_NOT_FOUND = "skip_not_found"
    SKIP_EXISTING = "skip_existing"  # Create Only: the key is in Stripe already, never touched
    NEW_VERSION = "new_version"  # an immutable field changed: a new object replaces the old one
    ARCHIVE = "archive"  # the key left the model: `active: false`


# The pseudo-field of a new version's change: the version in words, before → after.
VERSION_CHANGE = "version"
WRITES = (Action.CREATE, Action.UPDATE, Action.NEW_VERSION, Action.ARCHIVE)


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class PlannedRow:
    action: Action
    candidate: Candidate
    stripe_id: str | None = None
    changes: tuple[FieldChange, ...] = ()
    reason: str | None = None
    stripe_duplicates: tuple[str, ...] = ()  # every customer id that had this key, when several did
    # A partition run writes its rows again whatever Stripe holds: every value is sent, while
    # `changes` still names only the fields that differ.
    send_everything: bool = False

    @property
    def key(self) -> str:
        """The key of a row that is written or filed in the state; a row without one is rejected."""
        if self.candidate.key is None:
            raise ValueError(f"{self.action.value} of a row without a key")
        return self.candidate.key

    @property
    def target_id(self) -> str:
        """The Stripe object an update, a new version or an archive writes to."""
        if self.stripe_id is None:
            raise ValueError(f"{self.action.value} of {self.candidate.key!r} without a Stripe id")
        return self.stripe_id

    def values_to_send(self, object_type: StripeObjectType) -> dict[str, str | None]:
        """A create, a new version or a re-push sends every value; an update the changed ones, plus
        the rest of any object (address, shipping) they belong to, since Stripe replaces those whole."""
        desired = self.candidate.values
        if self.action in (Action.CREATE, Action.NEW_VERSION) or self.send_everything:
            return dict(desired)
        changed = {change.field for change in self.changes}
        objects = {object_type.whole_object_of(name) for name in changed} - {None}
        return {
            name: value
            for name, value in desired.items()
            if name in changed or object_type.whole_object_of(name) in objects
        }


@dataclass
class Plan:
    rows_read: int
    rows: list[PlannedRow] = field(default_factory=list)
    lookup: str | None = None  # how keys new to the sync were found in Stripe, if any were
    # (key, problem) for each key whose state row(s) could not be trusted and were ignored
    state_problems: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[Action, int]:
        counted = Counter(row.action for row in self.rows)
        # Rows the warehouse found unchanged never reached Python; they count as unchanged too.
        # (Archives are of keys no model row has.)
        counted[Action.UNCHANGED] += self.rows_read - sum(1 for row in self.rows if row.candidate.key_rows)
        return {action: counted[action] for action in Action}

    def replace(self, decided_again: Mapping[int, PlannedRow]) -> None:
        """Put rows decided again (by `id()` of the row they replace) in place of the old ones."""
        self.rows = [decided_again.get(id(row), row) for row in self.rows]

    def of(self, *actions: Action) -> list[PlannedRow]:
        return [row for row in self.rows if row.action in actions]

    @property
    def writes(self) -> list[PlannedRow]:
        """Creates and updates, alternating: they are separate Stripe endpoints with separate rate
        limits, so writes in flight should draw on both at once. Then new versions and archives."""
        creates, updates = self.of(Action.CREATE), self.of(Action.UPDATE)
        alternating = [row for pair in zip(creates, updates, strict=False) for row in pair]
        shorter = min(len(creates), len(updates))
        return alternating + creates[shorter:] + updates[shorter:] + self.of(Action.NEW_VERSION, Action.ARCHIVE)


def diff(current: Mapping[str, str | None], desired: Mapping[str, str | None]) -> tuple[FieldChange, ...]:
    """The desired fields whose value differs from what Stripe holds; unmapped fields are not ours."""
    changes = []
    for name, after in desired.items():
        before, after = blank_to_none(current.get(name)), blank_to_none(after)
        if before != after:
            changes.append(FieldChange(name, before, after))
    return tuple(changes)


def _compare(
    spec: SyncSpec, candidate: Candidate, current: StripeObject, repush: bool, duplicates: tuple[str, ...] = ()
) -> PlannedRow:
    object_type = spec.object_type
    changes = diff(current.values, candidate.values)
    if object_type.has_versions and object_type.immutable_changes({change.field for change in changes}):
        version = FieldChange(
            VERSION_CHANGE, object_type.version_text(current.values), object_type.version_text(candidate.values)
        )
        return PlannedRow(
            Action.NEW_VERSION,
            candidate,
            stripe_id=current.id,
            changes=(version, *changes),
            stripe_duplicates=duplicates,
        )
    action = Action.UPDATE if changes or repush else Action.UNCHANGED
    return PlannedRow(
        action,
        candidate,
        stripe_id=current.id,
        changes=changes,
        stripe_duplicates=duplicates,
        send_everything=repush,
    )


def _existing(row: PlannedRow) -> PlannedRow:
    """Create Only: an object already in Stripe is never touched; its id is kept for the writeback."""
    if row.action is Action.REJECT:
        return row
    reason = f"already in Stripe as {row.stripe_id} (Create Only never updates)"
    return PlannedRow(
        Action.SKIP_EXISTING,
        row.candidate,
        stripe_id=row.stripe_id,
        reason=reason,
        stripe_duplicates=row.stripe_duplicates,
    )


def _matched(spec: SyncSpec, candidate: Candidate, matches: list[StripeObject], repush: bool) -> PlannedRow:
    """The row against the Stripe objects that have its key, by the sync's duplicates policy."""
    if len(matches) == 1:
        return _compare(spec, candidate, matches[0], repush)
    ids = tuple(sorted(found.id for found in matches))
    if spec.duplicates_in_stripe == "reject":
        reason = f"several Stripe {spec.object_type.plural} share this {spec.key.field}: {', '.join(ids)}"
        return PlannedRow(Action.REJECT, candidate, reason=reason, stripe_duplicates=ids)
    by_age = sorted(matches, key=lambda found: (found.created, found.id))
    chosen = by_age[0] if spec.duplicates_in_stripe == "oldest" else by_age[-1]
    return _compare(spec, candidate, chosen, repush, duplicates=ids)


Lookup = Callable[[Mapping[str, str]], LookupResult]


@dataclass(frozen=True)
class LiveAccount:
    """Every object of the account as Stripe holds it now, read for a full resync."""

    by_id: Mapping[str, StripeObject]
    by_key: Mapping[str, list[StripeObject]]  # normalized key -> every object with it


def build_plan(
    spec: SyncSpec,
    candidates: Iterable[Candidate],
    rows_read: int,
    lookup: Lookup,
    live: LiveAccount | None = None,
    repush: bool = False,
) -> Plan:
    """Decide every candidate.

    A candidate whose Stripe id the state table knows is compared with the values last synced, or,
    when `live` (the whole account, read for a full resync) is given, with what Stripe holds now;
    other customers that share its key are then reported. Others are looked up by key, all in one
    `lookup` call. With `repush`, every valid row is written whatever Stripe holds (a partition run).
    """
    plan = Plan(rows_read=rows_read)
    unmatched: list[Candidate] = []
    for candidate in candidates:
        if candidate.state_problem and candidate.key is not None:
            plan.state_problems.append((candidate.key, candidate.state_problem))
        reason = rejection_reason(spec, candidate)
        prior = candidate.prior
        known_id = prior.stripe_id if prior else None
        if reason or candidate.key is None:  # a row without a key always has a reason
            plan.rows.append(PlannedRow(Action.REJECT, candidate, stripe_id=known_id, reason=reason))
        elif known_id and spec.behavior == "create_only":
            plan.rows.append(_existing(PlannedRow(Action.UNCHANGED, candidate, stripe_id=known_id)))
        elif prior and known_id and live is None:
            known = StripeObject(known_id, prior.synced_values or {})
            plan.rows.append(_compare(spec, candidate, known, repush))
        elif live and known_id and known_id in live.by_id:
            sharing = live.by_key.get(candidate.key, [])
            duplicates = tuple(sorted(c.id for c in sharing)) if len(sharing) > 1 else ()
            plan.rows.append(_compare(spec, candidate, live.by_id[known_id], repush, duplicates))
        else:
            # Never matched, or deleted in Stripe since: find it by key like a new row.
            unmatched.append(candidate)
    decided, plan.lookup = decide_by_key(spec, unmatched, lookup, repush)
    plan.rows.extend(decided)
    return plan


def decide_by_key(
    spec: SyncSpec, candidates: list[Candidate], lookup: Lookup, repush: bool = False
) -> tuple[list[PlannedRow], str | None]:
    """Candidates without a usable Stripe id, decided by looking their keys up (one `lookup`
    call for all): a customer found is adopted; only a key Stripe does not have is created.
    Returns the rows, and how the lookup found customers (None when nothing was looked up)."""
    if not candidates:
        return [], None
    wanted = {
        candidate.key: written
        for candidate in candidates
        if candidate.key is not None and (written := candidate.values[spec.key.field]) is not None
    }
    result = lookup(wanted)
    rows = []
    for candidate in candidates:
        if matches := result.found.get(candidate.key or ""):
            row = _matched(spec, candidate, matches, repush)
            rows.append(_existing(row) if spec.behavior == "create_only" else row)
        elif spec.behavior != "update_only":
            rows.append(PlannedRow(Action.CREATE, candidate, changes=diff({}, candidate.values)))
        else:
            rows.append(PlannedRow(Action.SKIP_NOT_FOUND, candidate, reason=_not_found_reason(spec, candidate)))
    return rows, result.how


def _not_found_reason(spec: SyncSpec, candidate: Candidate) -> str:
    name = spec.object_type.name
    if candidate.prior and candidate.prior.stripe_id:
        return f"{name} {candidate.prior.stripe_id} was deleted in Stripe (Update Only never creates)"
    return f"no Stripe {name} has this {spec.key.field} (Update Only never creates)"


def archives(spec: SyncSpec, left: LeftKeys, lookup: Lookup) -> list[PlannedRow]:
    """`archive_missing`: every object whose key left the model is archived, never deleted.

    A key whose state cannot be trusted is looked up in Stripe instead (one `lookup` call for all
    of them): the one object holding it is archived; when none or several do, nothing is, and the
    key is filed without an object.
    """
    rows = [_archive(key.key, key.prior, key.stripe_id, key.prior.synced_values or {}) for key in left.sound]
    if not left.damaged:
        return rows
    found = lookup({key: key for key, _ in left.damaged}).found
    for key, _ in left.damaged:
        holders = found.get(key, [])
        if len(holders) == 1:
            rows.append(_archive(key, None, holders[0].id, holders[0].values))
        else:
            held = f"{len(holders)} Stripe {spec.object_type.plural} hold" if holders else "no Stripe object holds"
            reason = f"left the model, and {held} this {spec.key.field}: nothing archived"
            rows.append(PlannedRow(Action.SKIP_NOT_FOUND, _left(key, None), reason=reason))
    return rows


def _left(key: str, prior: PriorState | None) -> Candidate:
    """A key no model row has any more."""
    return Candidate(key, key, {"active": "false"}, "", 0, prior)


def _archive(key: str, prior: PriorState | None, stripe_id: str, before: Mapping[str, str | None]) -> PlannedRow:
    return PlannedRow(
        Action.ARCHIVE,
        _left(key, prior),
        stripe_id=stripe_id,
        changes=(FieldChange("active", before.get("active") or "true", "false"),),
    )
