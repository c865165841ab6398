"""Fields that refer to another sync's objects: a price's `product` is given in the model as the
product sync's key, and becomes that product's Stripe id through the product sync's state (its
writeback), in the same Stripe account. A key that sync does not know rejects the row."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from census_stripe.objects import OBJECT_TYPES, is_id_of
from census_stripe.objects.base import blank_to_none
from census_stripe.plan.keys import normalize_key
from census_stripe.plan.rows import Candidate
from census_stripe.spec import SyncSpec

# A sync's name -> its keys' Stripe ids in the run's account.
StripeIds = Callable[[str], dict[str, str]]


def resolve_references(spec: SyncSpec, candidates: Iterable[Candidate], stripe_ids: StripeIds) -> Iterator[Candidate]:
    """The candidates with every reference replaced by the Stripe id it names."""
    referring = {
        name: getattr(spec, f"{referenced}_sync")
        for name, referenced in spec.object_type.references.items()
        if name in spec.columns_by_field or name in spec.constants
    }
    kinds = {name: OBJECT_TYPES[spec.object_type.references[name]] for name in referring}
    if not referring:
        yield from candidates
        return
    ids = {sync: stripe_ids(sync) for sync in set(referring.values())}
    for candidate in candidates:
        values, problems = dict(candidate.values), list(candidate.problems)
        for name, sync in referring.items():
            written = blank_to_none(values.get(name))
            if written is None:
                continue  # an empty required field is a rejection of its own
            # A referenced key is never an email: only trimmed, like the other sync's keys.
            stripe_id = ids[sync].get(normalize_key("id", written) or "")
            if stripe_id is None or not is_id_of(kinds[name], stripe_id):
                # Not synced, or the other sync's state for it is damaged (until that sync repairs it).
                problems.append(f"unknown {name} {written!r}: not synced by {sync}")
            else:
                values[name] = stripe_id
        yield replace(candidate, values=values, problems=tuple(problems))
