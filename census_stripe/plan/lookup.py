"""Finding the Stripe customers of keys the state table does not know yet, at the lowest cost.

Two strongly consistent ways exist (Search is not one: it lags writes by up to an hour):

- listing: every customer of the account, 100 per call, indexed by key. It finds every spelling
  of an email and works for any key, but costs one call per 100 customers in the account.
- per key (email keys only): `list(email=...)`, one call per spelling. Stripe's email filter is
  exact and case-sensitive, so the model's spelling and its lower-case form are both asked for; a
  customer stored in a third spelling (`Ada@Example.com` for `ada@EXAMPLE.com`) is not found.

`auto` asks per key straight away when the account is known to hold more pages of customers than
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
from census_stripe.stripe_client.values import PAGE_SIZE, Page, StripeCustomer

if TYPE_CHECKING:
    # Planning never imports the SDK: the client is handed in.
    from census_stripe.stripe_client.client import StripeCustomers

Found = dict[str, list[StripeCustomer]]


@dataclass(frozen=True)
class LookupResult:
    found: Found  # normalized key -> every customer with it
    how: str  # already_listed, list_all or per_key: the way the lookup took, for the run's metadata


def index_by_key(customers: Iterable[StripeCustomer], key_field: str) -> Found:
    """Customers by normalized key; a key several customers share lists them all."""
    found: Found = defaultdict(list)
    for customer in customers:
        value = customer.values.get(key_field)
        if value is not None:
            found[normalize_key(key_field, value)].append(customer)
    return found


class CustomerLookup:
    def __init__(
        self,
        customers: StripeCustomers,
        key_field: str,
        strategy: LookupStrategy = "auto",
        listed: list[StripeCustomer] | None = None,
        known_customers: int = 0,
    ):
        self.customers = customers
        self.key_field = key_field
        self.strategy = strategy
        self.listed = listed  # the whole account, when the run listed it already (full resync)
        self.known_pages = -(-known_customers // PAGE_SIZE)  # listing costs at least this many calls

    def __call__(self, wanted: Mapping[str, str]) -> LookupResult:
        """Customers for each key; `wanted` maps a normalized key to the key as the model writes it."""
        if self.listed is not None:
            listed = self._index([Page(self.listed, has_more=False)], wanted, page_budget=None)
            return LookupResult(listed, "already_listed")
        if self.key_field != "email" or self.strategy == "list_all":
            return LookupResult(self._by_listing(wanted, page_budget=None), "list_all")
        spellings = {key: sorted({written, key}) for key, written in wanted.items()}
        per_key_calls = sum(map(len, spellings.values()))
        if self.strategy == "auto" and per_key_calls > self.known_pages:
            found = self._by_listing(wanted, page_budget=per_key_calls)
            if found is not None:
                return LookupResult(found, "list_all")
        return LookupResult(self._per_key(spellings), "per_key")

    def _by_listing(self, wanted: Mapping[str, str], page_budget: int | None) -> Found | None:
        return self._index(self.customers.iter_pages(), wanted, page_budget)

    def _index(self, pages: Iterable[Page], wanted: Mapping[str, str], page_budget: int | None) -> Found | None:
        """Every match, or None once `page_budget` pages did not finish the listing."""
        found: Found = defaultdict(list)
        for count, page in enumerate(pages, start=1):
            for key, customers in index_by_key(page.customers, self.key_field).items():
                if key in wanted:
                    found[key].extend(customers)
            if page.has_more and page_budget is not None and count >= page_budget:
                return None
        return found

    def _per_key(self, spellings: Mapping[str, list[str]]) -> Found:
        found: Found = {}
        for key, variants in spellings.items():
            matches = {
                c.id: c for email in variants for page in self.customers.iter_pages(email) for c in page.customers
            }
            found[key] = list(matches.values())
        return found
