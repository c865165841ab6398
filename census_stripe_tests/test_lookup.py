"""Finding keys new to a sync in Stripe, counted call by call on the Stripe test double."""

import pytest

from census_stripe.plan.lookup import ObjectLookup
from census_stripe.stripe_client.client import StripeObjects


@pytest.fixture
def account(double):
    """An account of 1,000 customers (10 pages), two of which share an email."""
    double.load([{"email": f"user{i}@example.com", "metadata": {"ext": f"u{i}"}} for i in range(998)])
    double.load([{"email": "Twin@Example.com"}, {"email": "twin@example.com"}])
    return StripeObjects("sk_test_lookup", double.url)


def wanted(*emails):
    return {email.strip().lower(): email for email in emails}


def test_few_new_keys_are_asked_for_one_by_one(account):
    result = ObjectLookup(account, "email")(wanted("user5@example.com", "nobody@example.com"))
    found = result.found
    assert result.how == "per_key"
    assert [c.values["email"] for c in found["user5@example.com"]] == ["user5@example.com"]
    assert found["nobody@example.com"] == []
    # The listing stopped after 2 pages (the cost of 2 keys), then 2 calls asked for the keys.
    assert account.calls.counts["list"] == 4


def test_many_new_keys_are_found_in_one_listing(account):
    result = ObjectLookup(account, "email")(wanted(*(f"user{i}@example.com" for i in range(50))))
    found = result.found
    assert result.how == "list_all"
    assert account.calls.counts["list"] == 10
    assert len(found) == 50


def test_mixed_case_model_email_matches_a_lower_case_stripe_email_either_way(account):
    for strategy in ("per_key", "list_all"):
        found = ObjectLookup(account, "email", strategy)(wanted("USER7@Example.com")).found
        assert [c.values["email"] for c in found["user7@example.com"]] == ["user7@example.com"]


def test_listing_finds_every_spelling_of_a_duplicated_email(account):
    found = ObjectLookup(account, "email", "list_all")(wanted("twin@EXAMPLE.com")).found
    assert sorted(c.values["email"] for c in found["twin@example.com"]) == ["Twin@Example.com", "twin@example.com"]
    assert all(c.created > 0 for c in found["twin@example.com"])


def test_per_key_asks_for_the_models_spelling_and_the_lower_case_one(account):
    found = ObjectLookup(account, "email", "per_key")(wanted("Twin@Example.com")).found
    assert len(found["twin@example.com"]) == 2
    assert account.calls.counts["list"] == 2


def test_metadata_keys_are_always_found_by_listing(account):
    result = ObjectLookup(account, "metadata.ext")({"u3": "u3"})
    found = result.found
    assert result.how == "list_all"
    assert [c.values["metadata.ext"] for c in found["u3"]] == ["u3"]


@pytest.mark.parametrize("new_keys", [1, 3, 9, 10, 11, 40])
def test_auto_never_costs_more_than_twice_the_cheaper_way(account, new_keys):
    keys = wanted(*(f"new{i}@example.com" for i in range(new_keys)))
    ObjectLookup(account, "email")(keys)
    cheaper = min(10, new_keys)  # 10 pages, or one call per (already lower-case) key
    assert account.calls.counts["list"] <= 2 * cheaper


def test_an_account_known_to_be_large_is_asked_per_key_without_listing(account):
    assert (
        ObjectLookup(account, "email", known_customers=5_000)(wanted("user5@example.com", "nobody@example.com")).how
        == "per_key"
    )
    assert account.calls.counts["list"] == 2
