"""Every decision to write is applied by Stripe, never answered with the stored response of an
earlier one: Stripe (here its double) replays an idempotency key for 24 hours, so a key must name one
attempt of one intent. A retry still replays, and runs killed at random points make no duplicate.

Each test is a case where an earlier version reported a write that Stripe never applied.
"""

import urllib.parse
import urllib.request

import pytest

from census_stripe.objects import PRICE, PRODUCT
from census_stripe.plan.sql import ModelSlice
from census_stripe.sync import RunOptions
from census_stripe_tests.catalog import run, stripe_for, sync_spec, write_model
from census_stripe_tests.synthetic import add_customers, make_model
from census_stripe_tests.test_delivery import (
    ROWS,
    assert_stripe_equals_model,
    customers_for,
    finish_run,
    run_in_process,
    sync,
)
from census_stripe_tests.test_trust import execute, state_rows


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    make_model(path, 20)
    return path


def edit_by_hand(double, path: str, **params: str) -> None:
    """An edit in Stripe's dashboard: a plain POST, without an idempotency key."""
    request = urllib.request.Request(
        f"{double.url}/v1/{path}",
        data=urllib.parse.urlencode(params).encode(),
        headers={"Authorization": "Bearer sk_test_by_hand"},
        method="POST",
    )
    urllib.request.urlopen(request).close()


def customer_id(model, email: str) -> str:
    [(_, _, stripe_id, _)] = state_rows(model, f"customer_key = '{email}'")
    return stripe_id


def rename(model, email: str, name: str) -> None:
    execute(model, f"update main.stripe_customers set full_name = '{name}' where email = '{email}'")


def name_in_stripe(double, stripe_id: str) -> str | None:
    found = customers_for(double, key="sk_test_reader").retrieve(stripe_id)
    assert found is not None
    return found.values["name"]


def test_a_full_resync_undoes_a_hand_edit_made_after_the_last_update(double, model):
    sync(model, customers_for(double))
    rename(model, "user3@example.com", "Ada Lovelace")
    assert sync(model, customers_for(double)).counts()["updated"] == 1
    edited = customer_id(model, "user3@example.com")
    edit_by_hand(double, f"customers/{edited}", name="Edited In The Dashboard")

    counts = sync(model, customers_for(double), options=RunOptions(full_resync=True)).counts()
    assert (counts["updated"], counts["created"], counts["failed"]) == (1, 0, 0)
    assert name_in_stripe(double, edited) == "Ada Lovelace"
    assert_stripe_equals_model(double, model)


def test_a_value_that_flaps_within_a_day_ends_as_the_model_says(double, model):
    sync(model, customers_for(double))
    flapping = customer_id(model, "user3@example.com")
    for name in ("B", "A", "B"):
        rename(model, "user3@example.com", name)
        assert sync(model, customers_for(double)).counts()["updated"] == 1
        assert name_in_stripe(double, flapping) == name
    assert_stripe_equals_model(double, model)


def test_a_partition_pushed_again_within_a_day_overwrites_hand_edits_again(double, model):
    sync(model, customers_for(double))
    edited = customer_id(model, "user3@example.com")
    repush = RunOptions(model_slice=ModelSlice("region", values=("NA",)))
    for attempt in ("first", "second"):
        edit_by_hand(double, f"customers/{edited}", name=f"Edited by hand, {attempt} time")
        assert sync(model, customers_for(double), options=repush).counts()["updated"] == 20
        assert name_in_stripe(double, edited) == "User 3"
    assert_stripe_equals_model(double, model)


def test_a_create_replayed_for_a_customer_given_another_email_by_hand_is_made_again(double, model):
    """State lost, and the customer's email changed in the dashboard: the lookup finds no customer
    with the model's email, and the create's key is the first one again. Stripe's replay names a
    customer that no longer has the key, so a new one is made."""
    sync(model, customers_for(double))
    moved = customer_id(model, "user5@example.com")
    edit_by_hand(double, f"customers/{moved}", email="moved@example.com")
    execute(model, "delete from census_stripe.sync_state where customer_key = 'user5@example.com'")

    counts = sync(model, customers_for(double)).counts()
    assert (counts["created"], counts["failed"]) == (1, 0)
    created = customer_id(model, "user5@example.com")
    assert created != moved
    in_stripe = {c.id: c.values["email"] for c in customers_for(double, key="sk_test_reader").iter_all()}
    assert (in_stripe[created], in_stripe[moved]) == ("user5@example.com", "moved@example.com")
    assert double.stats()["idempotent_replays"] >= 1


CATALOG = {
    "products": (
        PRODUCT,
        # One of the two leaves the model: above the default max_archive_rate (10 %).
        "model: products\nobject: product\nbehavior: update_or_create\narchive_missing: true\nmax_archive_rate: 0.5\n"
        "key: {field: id, column: id}\nmapping: {name: name}\n",
        [{"id": "team", "name": "Team"}, {"id": "pro", "name": "Pro"}],
    ),
    "prices": (
        PRICE,
        "model: prices\nobject: price\nbehavior: update_or_create\narchive_missing: true\nmax_archive_rate: 0.5\n"
        "product_sync: products\n"
        "key: {field: lookup_key, column: lookup_key}\n"
        "mapping: {product: product, currency: currency, unit_amount: amount}\n",
        [
            {"lookup_key": "team_usd", "product": "team", "currency": "usd", "amount": "1000"},
            {"lookup_key": "pro_usd", "product": "pro", "currency": "usd", "amount": "2500"},
        ],
    ),
}


@pytest.mark.parametrize("sync_name", ["products", "prices"])
def test_an_object_archived_and_reactivated_twice_in_a_day_is_active(double, tmp_path, sync_name):
    warehouse = tmp_path / "warehouse.duckdb"
    if sync_name == "prices":
        _, products_text, products_rows = CATALOG["products"]
        write_model(warehouse, "products", products_rows)
        run(warehouse, sync_spec(products_text, "products"), double.url)
    object_type, text, rows = CATALOG[sync_name]
    spec = sync_spec(text, sync_name)
    write_model(warehouse, sync_name, rows)
    run(warehouse, spec, double.url)

    for _ in range(2):
        write_model(warehouse, sync_name, rows[:1])
        assert run(warehouse, spec, double.url).counts()["archived"] == 1
        write_model(warehouse, sync_name, rows)
        assert run(warehouse, spec, double.url).counts()["updated"] == 1
        active = [o.values["active"] for o in stripe_for(double.url, object_type).iter_all()]
        assert active == ["true", "true"]


# Where each run is killed: after so many writes of a kind were answered, with the writes then in flight
# applied by Stripe anyway (their answers lost) or never received.
KILL_POINTS = [("update", 40, "applied"), ("create", 15, "applied"), ("update", 120, "lost")]


def test_runs_killed_while_values_flap_converge_to_the_model_without_duplicates(double, tmp_path, processes):
    """Every customer's plan flaps within a day (X, back, X again) while new customers sign up; runs
    writing X again are killed (SIGKILL) mid-run, then one is left to finish."""
    model = tmp_path / "warehouse.duckdb"
    make_model(model, ROWS)
    sync(model, customers_for(double))
    execute(model, "update main.stripe_customers set plan = 'enterprise'")
    sync(model, customers_for(double))
    make_model(model, ROWS)
    sync(model, customers_for(double))
    execute(model, "update main.stripe_customers set plan = 'enterprise'")
    add_customers(model, ROWS, ROWS // 3)

    for endpoint, accepted, in_flight in KILL_POINTS:
        double.pause_after(accepted, endpoint)
        process = run_in_process(processes, model, double, concurrency=4)
        double.wait_until_paused(client=process)
        processes.kill(process)
        double.resume(drop_waiting=in_flight == "lost")
    assert finish_run(processes, model, double)["failed"] == 0
    assert double.stats()["customers"] == ROWS + ROWS // 3
    assert_stripe_equals_model(double, model)
