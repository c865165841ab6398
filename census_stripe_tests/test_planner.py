"""Deciding rows: pure functions, no warehouse and no Stripe."""

import pytest

from census_stripe.objects import CUSTOMER
from census_stripe.plan.lookup import LookupResult
from census_stripe.plan.planner import Action, FieldChange, LiveAccount, Plan, archives, build_plan, diff
from census_stripe.plan.rows import Candidate, LeftKey, LeftKeys, PriorState, rejection_reason
from census_stripe.spec import parse_sync_spec
from census_stripe.stripe_client.values import StripeObject

SPEC_TEXT = """
model: stripe_customers
behavior: {behavior}
key: {{field: email, column: email}}
mapping:
  name: full_name
  address.line1: line1
  address.city: city
  metadata.plan: plan
"""


def spec(behavior="update_or_create"):
    return parse_sync_spec(SPEC_TEXT.format(behavior=behavior), "test.yaml")


def candidate(
    email="ada@example.com", name="Ada", city="London", plan="pro", key_rows=1, prior=None, line1="1 Main St"
):
    values = {"email": email, "name": name, "address.line1": line1, "address.city": city, "metadata.plan": plan}
    key = email.strip().lower() if email else None
    return Candidate(key, email, values, row_hash=f"h-{email}-{name}-{city}-{plan}", key_rows=key_rows, prior=prior)


def synced(values, stripe_id="cus_1"):
    return PriorState(stripe_id=stripe_id, row_hash="old", synced_values=values, synced_at=None)


def no_lookup(keys):
    raise AssertionError(f"no lookup expected, got {keys}")


def finds(found):
    return lambda keys: LookupResult(found, "per_key")


finds_nothing = finds({})


def test_new_row_not_in_stripe_is_created_with_every_value():
    plan = build_plan(spec(), [candidate()], rows_read=1, lookup=finds_nothing)
    [row] = plan.rows
    assert row.action is Action.CREATE
    assert row.values_to_send(CUSTOMER) == candidate().values
    assert FieldChange("name", None, "Ada") in row.changes


def test_update_only_never_creates_and_says_why():
    plan = build_plan(spec("update_only"), [candidate()], rows_read=1, lookup=finds_nothing)
    [row] = plan.rows
    assert row.action is Action.SKIP_NOT_FOUND
    assert "no Stripe customer has this email" in row.reason


def test_existing_customer_is_matched_and_only_differing_fields_are_sent():
    stripe_values = {
        "email": "ada@example.com",
        "name": "Ada L.",
        "address.line1": "1 Main St",
        "address.city": "London",
        "metadata.plan": "pro",
        "metadata.other": "untouched",
    }
    lookup = finds({"ada@example.com": [StripeObject("cus_9", stripe_values)]})
    [row] = build_plan(spec(), [candidate()], rows_read=1, lookup=lookup).rows
    assert row.action is Action.UPDATE
    assert row.stripe_id == "cus_9"
    assert row.changes == (FieldChange("name", "Ada L.", "Ada"),)
    assert row.values_to_send(CUSTOMER) == {"name": "Ada"}


def test_an_address_change_sends_the_whole_address_because_stripe_replaces_it():
    prior = synced(
        {
            "email": "ada@example.com",
            "name": "Ada",
            "address.line1": "1 Main St",
            "address.city": "Paris",
            "metadata.plan": "pro",
        }
    )
    [row] = build_plan(spec(), [candidate(prior=prior)], rows_read=1, lookup=no_lookup).rows
    assert row.changes == (FieldChange("address.city", "Paris", "London"),)
    assert row.values_to_send(CUSTOMER) == {"address.line1": "1 Main St", "address.city": "London"}


def test_known_stripe_id_compares_with_last_synced_values_without_any_lookup():
    prior = synced(dict(candidate().values))
    plan = build_plan(spec(), [candidate(prior=prior)], rows_read=5, lookup=no_lookup)
    assert plan.lookup is None
    assert [row.action for row in plan.rows] == [Action.UNCHANGED]
    assert plan.counts()[Action.UNCHANGED] == 5  # 4 never left the warehouse, 1 had only cosmetic changes


def test_a_partition_repush_sends_every_value_but_lists_only_real_changes():
    prior = synced(dict(candidate().values) | {"metadata.plan": "free"})
    unchanged, changed = build_plan(
        spec(),
        [candidate(prior=synced(dict(candidate().values))), candidate(prior=prior)],
        rows_read=2,
        lookup=no_lookup,
        repush=True,
    ).rows
    assert (unchanged.action, unchanged.changes) == (Action.UPDATE, ())
    assert unchanged.values_to_send(CUSTOMER) == candidate().values
    assert changed.changes == (FieldChange("metadata.plan", "free", "pro"),)
    assert changed.values_to_send(CUSTOMER) == candidate().values


def test_blank_and_missing_are_the_same_to_stripe():
    assert diff({"name": ""}, {"name": None}) == ()
    assert diff({}, {"metadata.plan": ""}) == ()
    assert diff({"name": "A"}, {"name": None}) == (FieldChange("name", "A", None),)


def test_several_stripe_customers_with_the_email_reject_the_row_naming_them():
    lookup = finds({"ada@example.com": [StripeObject("cus_b", {}), StripeObject("cus_a", {})]})
    [row] = build_plan(spec(), [candidate()], rows_read=1, lookup=lookup).rows
    assert row.action is Action.REJECT
    assert row.reason == "several Stripe customers share this email: cus_a, cus_b"


@pytest.mark.parametrize(
    "row, reason",
    [
        (candidate(email=None), "null key: column 'email' is empty"),
        (candidate(email="not-an-email"), "invalid email: 'not-an-email'"),
        (candidate(email="a@b"), "invalid email: 'a@b'"),
        (candidate(key_rows=2), "duplicate key: 2 model rows share email 'ada@example.com'"),
        (candidate(name="x" * 257), "value too long: name has 257 characters, Stripe allows 256"),
        (candidate(plan="p" * 501), "value too long: metadata.plan has 501 characters, Stripe allows 500"),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(row, reason):
    assert rejection_reason(spec(), row) == reason
    plan = build_plan(spec(), [row, candidate(email="ok@example.com")], rows_read=2, lookup=finds_nothing)
    assert [(r.action, r.reason) for r in plan.rows] == [(Action.REJECT, reason), (Action.CREATE, None)]


def test_every_problem_of_a_row_is_named():
    reason = rejection_reason(spec(), candidate(email="bad", name="x" * 300))
    assert reason == "invalid email: 'bad'; value too long: name has 300 characters, Stripe allows 256"


def test_all_unknown_keys_are_looked_up_in_one_call():
    calls = []

    def lookup(keys):
        calls.append(sorted(keys))
        return LookupResult({}, "list_all")

    rows = [candidate(email=f"u{i}@example.com") for i in range(3)]
    plan = build_plan(spec(), rows, rows_read=3, lookup=lookup)
    assert calls == [["u0@example.com", "u1@example.com", "u2@example.com"]]
    assert plan.lookup == "list_all"  # how the lookup went, as the run's metadata shows it


def test_full_resync_compares_with_what_stripe_holds_now():
    prior = synced(dict(candidate().values), stripe_id="cus_1")
    edited_by_hand = {**candidate().values, "name": "Edited In Dashboard"}
    live = LiveAccount({"cus_1": StripeObject("cus_1", edited_by_hand)}, {})
    [row] = build_plan(spec(), [candidate(prior=prior)], rows_read=1, lookup=no_lookup, live=live).rows
    assert row.action is Action.UPDATE
    assert row.changes == (FieldChange("name", "Edited In Dashboard", "Ada"),)


def test_full_resync_finds_a_customer_deleted_in_stripe_again_by_key():
    prior = synced(dict(candidate().values), stripe_id="cus_gone")
    [row] = build_plan(
        spec(), [candidate(prior=prior)], rows_read=1, lookup=finds_nothing, live=LiveAccount({}, {})
    ).rows
    assert row.action is Action.CREATE


PRODUCTS_TEXT = """
model: products
object: product
behavior: update_or_create
archive_missing: true
key: {field: id, column: id}
mapping: {name: name}
"""


def test_keys_that_left_the_model_with_damaged_state_archive_only_the_one_object_stripe_holds_under_them():
    products = parse_sync_spec(PRODUCTS_TEXT, "products.yaml")
    sound = LeftKey("old", "old", synced({"name": "Old", "active": "true"}, stripe_id="old"))
    damaged = [("solo", "unknown status 'x'"), ("gone", "2 state rows for one key"), ("twice", "unknown status 'x'")]
    lookup = finds(
        {
            "solo": [StripeObject("solo", {"id": "solo", "active": "true"})],
            "twice": [StripeObject("prod_1", {}), StripeObject("prod_2", {})],
        }
    )
    plan = Plan(rows_read=5, rows=archives(products, LeftKeys([sound], damaged), lookup))
    decided = {row.candidate.key: (row.action, row.stripe_id, row.reason) for row in plan.rows}
    assert decided == {
        "old": (Action.ARCHIVE, "old", None),
        "solo": (Action.ARCHIVE, "solo", None),
        "gone": (Action.SKIP_NOT_FOUND, None, "left the model, and no Stripe object holds this id: nothing archived"),
        "twice": (Action.SKIP_NOT_FOUND, None, "left the model, and 2 Stripe products hold this id: nothing archived"),
    }
    # None of these is a model row: the model's five rows were all unchanged.
    counts = plan.counts()
    assert (counts[Action.UNCHANGED], counts[Action.ARCHIVE], counts[Action.SKIP_NOT_FOUND]) == (5, 2, 2)
