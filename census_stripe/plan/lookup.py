"""Finding the Stripe objects of keys the state table does not know yet, at the lowest cost.

Two strongly consistent ways exist (Search is not one: it lags writes by up to an hour):

- listing: every object of the account, 100 per call, indexed by key. It finds every spelling
  of an email and works for any key, but costs one call per 100 objects in the account.
- per key, for the key Stripe can find objects by (the type's `listed_by`):
  - customers' email: `list(email=...)`, one call per spelling. Stripe's email filter is exact
    and case-sensitive, so the model's spelling and its key (plan/keys.py) are both asked for; a
    customer stored in a third spelling (`Ada@Example.com` for `ada@EXAMPLE.com`) is not found.
  - prices' lookup key: `list(lookup_keys=[...])`, up to 10 keys a call.
  - products' id: `retrieve(id)`, one call per key.

`auto` asks per key straight away when the account is known to hold more pages of objects than
there are calls to make (the state table knows a floor on its size). Otherwise, as on a first
sync, the size is unknown until listed, so `auto` rents before it buys: it lists pages while that
has cost less than asking per key would, and switches to asking per key if the listing is not done
by then. That never costs more than twice the cheaper way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from census_stripe.plan.keys import normalize_key
from census_stripe.spec import LookupStrategy
from census_stripe.stripe_client.values import PAGE_SIZE, Page, StripeObject

if TYPE_CHECKING:
    # Planning never imports the SDK: the client is handed in.
    from census_stripe.stripe_client.client import StripeObjects

Found = dict[str, list[StripeObject]]
LOOKUP_KEYS_PER_CALL = 10  # Stripe's limit on `lookup_keys[]` in one price listing


@dataclass(frozen=True)
class LookupResult:
    found: Found  # normalized key -> every customer with it
    how: str  # already_listed, list_all or per_key: the way the lookup took, for the run's metadata


def index_by_key(objects: Iterable[StripeObject], key_field: str) -> Found:
    """Objects by normalized key; a key several objects share lists them all."""
    found: Found = defaultdict(list)
    for stripe_object in objects:
        value = stripe_object.id if key_field == "id" else stripe_object.values.get(key_field)
        key = normalize_key(key_field, value) if value is not None else None
        if key is not None:
            found[key].append(stripe_object)
    return found


def _batches(keys: list[str], size: int) -> list[list[str]]:
    return [keys[start : start + size] for start in range(0, len(keys), size)]


class ObjectLookup:
    def __init__(
        self,
        objects: StripeObjects,
        key_field: str,
        strategy: LookupStrategy = "auto",
        listed: list[StripeObject] | None = None,
        known_customers: int = 0,
    ):
        self.objects = objects
        self.key_field = key_field
        self.strategy = strategy
        self.listed = listed  # the whole account, when the run listed it already (full resync)
        self.known_pages = -(-known_customers // PAGE_SIZE)  # listing costs at least this many calls

    def __call__(self, wanted: Mapping[str, str]) -> LookupResult:
        """Objects for each key; `wanted` maps a normalized key to the key as the model writes it."""
        if self.listed is not None:
            listed = self._index([Page(self.listed, has_more=False)], wanted)
            return LookupResult(listed, "already_listed")
        if self.key_field != self.objects.object_type.listed_by or self.strategy == "list_all":
            return LookupResult(self._index(self.objects.iter_pages(), wanted), "list_all")
        spellings = {key: sorted({written, key}) for key, written in wanted.items()}
        if self.key_field == "email":
            per_key_calls = sum(map(len, spellings.values()))
        elif self.key_field == "lookup_key":
            per_key_calls = -(-len(wanted) // LOOKUP_KEYS_PER_CALL)
        else:
            per_key_calls = len(wanted)
        if self.strategy == "auto" and per_key_calls > self.known_pages:
            found = self._index_within(self.objects.iter_pages(), wanted, page_budget=per_key_calls)
            if found is not None:
                return LookupResult(found, "list_all")
        return LookupResult(self._per_key(spellings, wanted), "per_key")

    def _index(self, pages: Iterable[Page], wanted: Mapping[str, str]) -> Found:
        """Every match in every page."""
        found: Found = defaultdict(list)
        for page in pages:
            self._add_matches(found, page, wanted)
        return found

    def _index_within(self, pages: Iterable[Page], wanted: Mapping[str, str], page_budget: int) -> Found | None:
        """Every match, or None once `page_budget` pages did not finish the listing."""
        found: Found = defaultdict(list)
        for count, page in enumerate(pages, start=1):
            self._add_matches(found, page, wanted)
            if page.has_more and count >= page_budget:
                return None
        return found

    def _add_matches(self, found: Found, page: Page, wanted: Mapping[str, str]) -> None:
        for key, objects in index_by_key(page.objects, self.key_field).items():
            if key in wanted:
                found[key].extend(objects)

    def _per_key(self, spellings: Mapping[str, list[str]], wanted: Mapping[str, str]) -> Found:
        if self.key_field == "lookup_key":
            found: Found = defaultdict(list)
            for batch in _batches(sorted(wanted), LOOKUP_KEYS_PER_CALL):
                pages = self.objects.iter_pages({"lookup_keys": batch})
                for key, prices in self._index(pages, wanted).items():
                    found[key].extend(prices)
            return found
        if self.key_field == "id":
            return {key: [hit] for key in wanted if (hit := self.objects.retrieve(key))}
        found = {}
        for key, variants in spellings.items():
            matches = {
                c.id: c
                for email in variants
                for page in self.objects.iter_pages({"email": email})
                for c in page.objects
            }
            found[key] = list(matches.values())
        return found
