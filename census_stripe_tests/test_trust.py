"""The right Stripe customer every time: state bound to one account, no create before a lookup,
full resyncs that really repair, and damaged state that never stops a run.

Each test reproduces a case seen on an earlier version, where it made a duplicate customer or
silently skipped one.
"""

import json
import logging

import duckdb
import pytest

from census_stripe.demo.local_stripe import LocalStripe
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.values import StripeAccount
from census_stripe.sync import RunOptions
from census_stripe_tests.conftest import API_KEY, DEMO_SYNC, SyncRunner
from census_stripe_tests.synthetic import make_model
from census_stripe_tests.test_delivery import ROWS, assert_stripe_equals_model, customers_for, sync

LIVE_KEY = "sk_live_trust0123456789"


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    make_model(path, ROWS)
    return path


def state_rows(model, where: str = "true") -> list[tuple]:
    with duckdb.connect(str(model), read_only=True) as connection:
        return connection.execute(
            "select stripe_account, customer_key, stripe_customer_id, status from census_stripe.sync_state "
            f"where {where} order by all"
        ).fetchall()


def execute(model, *statements: str) -> None:
    with duckdb.connect(str(model)) as connection:
        for statement in statements:
            connection.execute(statement)


def delete_in_stripe(double, *emails: str) -> list[str]:
    """Delete, by hand as in the dashboard, the customers with these emails; their ids."""
    reader = customers_for(double, key="sk_test_reader")
    gone = [c.id for c in reader.iter_all() if c.values["email"] in emails]
    for customer_id in gone:
        reader._service.delete(customer_id)
    return gone


# -- 1. State belongs to one Stripe account and mode ------------------------------------------


def test_another_account_never_trusts_this_ones_state(double, model):
    first = sync(model, customers_for(double))
    assert first.account == StripeAccount("acct_double", livemode=False)
    assert first.counts()["created"] == ROWS

    with StripeDoubleServer(account_id="acct_other") as other:
        switched = sync(model, customers_for(other))
        assert switched.account == StripeAccount("acct_other", livemode=False)
        counts = switched.counts()
        # Every key was looked up in the new, empty account and created there: nothing "unchanged".
        assert (counts["created"], counts["unchanged"]) == (ROWS, 0)
        assert other.stats()["customers"] == ROWS
        assert_stripe_equals_model_in(other, model, "acct_other/test")

    # Back on the first account: its own state still holds, so nothing to do and no call to make.
    back = customers_for(double)
    assert sync(model, back).counts()["created"] == 0
    assert back.calls.total == 0
    assert double.stats()["customers"] == ROWS


def assert_stripe_equals_model_in(server, model, account: str) -> None:
    in_stripe = {c.id for c in customers_for(server, key="sk_test_reader").iter_all()}
    assert {row[2] for row in state_rows(model, f"stripe_account = '{account}'")} == in_stripe


def test_a_live_key_on_the_same_server_is_another_account(double, model):
    sync(model, customers_for(double))
    double.reset()  # live mode's data is not test mode's: here, an empty account
    live = sync(model, customers_for(double, key=LIVE_KEY))
    assert live.account == StripeAccount("acct_double", livemode=True)
    assert live.counts()["created"] == ROWS
    accounts = {row[0] for row in state_rows(model)}
    assert accounts == {"acct_double/test", "acct_double/live"}


def test_local_servers_without_an_account_endpoint_are_told_apart_by_address(sync_runner, stripe_url):
    runner = sync_runner()
    first = runner.metadata(runner.run())
    assert first["created"] == 294 and first["stripe_account"].startswith("local_")

    with LocalStripe() as other:
        elsewhere = SyncRunner(load_sync(DEMO_SYNC), runner.warehouse_path, other.url)
        metadata = elsewhere.metadata(elsewhere.run())
        assert metadata["stripe_account"] != first["stripe_account"]
        assert (metadata["created"], metadata["unchanged"]) == (294, 0)
        assert len(list(StripeObjects(API_KEY, other.url).iter_all())) == 294


def test_state_from_before_accounts_is_never_attached_to_an_account(double, model):
    """A state table written by an older version, with ids of some other account: migrated on
    first use, and none of its ids trusted."""
    execute(
        model,
        "create schema census_stripe",
        "create table census_stripe.sync_state (sync_name text, customer_key text, stripe_customer_id text, "
        "row_hash text, synced_values text, synced_at timestamp, status text, error text, run_id text, "
        "updated_at timestamp)",
        "insert into census_stripe.sync_state select 'customers', email, 'cus_elsewhere' || i, null, '{}', "
        "now(), 'synced', null, 'old', now() from (select email, row_number() over () as i "
        "from main.stripe_customers)",
    )
    counts = sync(model, customers_for(double)).counts()
    assert (counts["created"], counts["updated"], counts["failed"]) == (ROWS, 0, 0)
    assert_stripe_equals_model(double, model)
    assert state_rows(model, "stripe_account is null") == []


# -- 2. Never create before looking ------------------------------------------------------------


def test_an_id_stripe_does_not_have_is_looked_up_by_key_before_any_create(double, model):
    sync(model, customers_for(double))
    # The state's id was edited by hand (or came from elsewhere); the customer still exists.
    execute(
        model,
        "update census_stripe.sync_state set stripe_customer_id = 'cus_nosuchcustomer' "
        "where customer_key = 'user7@example.com'",
        "update main.stripe_customers set plan = 'enterprise' where email = 'user7@example.com'",
    )
    report = sync(model, customers_for(double))
    counts = report.counts()
    assert (counts["created"], counts["updated"], counts["failed"]) == (0, 1, 0)
    assert double.stats()["customers"] == ROWS  # adopted, not duplicated
    assert_stripe_equals_model(double, model)


def test_a_deleted_customer_is_created_again_only_when_stripe_has_none(double, model):
    sync(model, customers_for(double))
    [gone] = delete_in_stripe(double, "user3@example.com")
    reader = customers_for(double, key="sk_test_reader")
    execute(model, "update main.stripe_customers set plan = 'enterprise' where email = 'user3@example.com'")

    counts = sync(model, customers_for(double)).counts()
    assert (counts["created"], counts["recreated"], counts["failed"]) == (1, 1, 0)
    [(_, _, recreated, status)] = state_rows(model, "customer_key = 'user3@example.com'")
    assert recreated != gone and status == "synced" and reader.exists(recreated)
    assert_stripe_equals_model(double, model)


# -- 3. Full resync repairs for real -----------------------------------------------------------


def test_full_resync_recreates_deleted_customers_with_fresh_idempotency_keys(double, model):
    sync(model, customers_for(double))
    deleted = delete_in_stripe(double, "user1@example.com", "user2@example.com")
    reader = customers_for(double, key="sk_test_reader")

    for attempt in range(2):
        report = sync(model, customers_for(double), options=RunOptions(full_resync=True))
        counts = report.counts()
        # The first resync recreates both (Stripe gave new ids); the second finds nothing to do.
        expected = 2 if attempt == 0 else 0
        assert (counts["created"], counts["recreated"], counts["updated"]) == (expected, expected, 0)
        ids = {row[2] for row in state_rows(model)}
        assert not ids & set(deleted)
        assert all(reader.exists(customer_id) for customer_id in ids)
    assert_stripe_equals_model(double, model)


def test_a_create_stripe_replays_for_a_deleted_customer_is_made_again(double, model):
    """State lost as well as the customer: the create's idempotency key is the first one again, and
    Stripe answers with the deleted customer's id for a day. The sync sees it and creates anew."""
    sync(model, customers_for(double))
    [gone] = delete_in_stripe(double, "user5@example.com")
    reader = customers_for(double, key="sk_test_reader")
    execute(model, "delete from census_stripe.sync_state where customer_key = 'user5@example.com'")

    counts = sync(model, customers_for(double)).counts()
    assert counts["created"] == 1
    [(_, _, created, _)] = state_rows(model, "customer_key = 'user5@example.com'")
    assert created != gone and reader.exists(created)
    assert double.stats()["idempotent_replays"] >= 1
    assert_stripe_equals_model(double, model)


def test_full_resync_reports_other_customers_that_share_a_known_key(double, model):
    sync(model, customers_for(double))
    [twin] = double.load([{"email": "user9@example.com", "name": "Made By Hand"}])
    report = sync(model, customers_for(double), options=RunOptions(full_resync=True))
    [row] = [row for row in report.plan.rows if row.stripe_duplicates]
    assert row.candidate.key == "user9@example.com" and twin in row.stripe_duplicates
    assert row.stripe_id != twin  # the customer the sync knows is kept
    assert report.counts()["stripe_duplicate_keys"] == 1


# -- 5. Damaged state never stops a run --------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        "update census_stripe.sync_state set synced_values = '{not json' where customer_key = 'user4@example.com'",
        "update census_stripe.sync_state set synced_values = '[1, 2]' where customer_key = 'user4@example.com'",
        # A second row for the key, with an id that is wrong and newer: it must not win.
        "insert into census_stripe.sync_state select * replace ('cus_wrongtwin' as stripe_customer_id, "
        "now() + interval 1 day as updated_at) from census_stripe.sync_state where customer_key = 'user4@example.com'",
        # Written by a future version, or by hand: the run stopped on it with a ValueError.
        "update census_stripe.sync_state set status = 'resynced_by_v9' where customer_key = 'user4@example.com'",
        "update census_stripe.sync_state set row_hash = null where customer_key = 'user4@example.com'",
        "update census_stripe.sync_state set stripe_customer_id = 'prod_notacustomer' "
        "where customer_key = 'user4@example.com'",
    ],
    ids=["not-json", "not-an-object", "two-rows", "unknown-status", "null-hash", "wrong-kind-of-id"],
)
def test_damaged_state_is_warned_about_looked_up_and_repaired(double, model, damage, caplog):
    sync(model, customers_for(double))
    [(_, _, right_id, _)] = state_rows(model, "customer_key = 'user4@example.com'")
    execute(model, damage, "update main.stripe_customers set plan = 'enterprise' where email = 'user4@example.com'")

    with caplog.at_level(logging.WARNING):
        report = sync(model, customers_for(double))
    counts = report.counts()
    assert (counts["state_rows_repaired"], counts["updated"], counts["created"], counts["failed"]) == (1, 1, 0, 0)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "census_stripe.sync_state" in warning and "'user4@example.com'" in warning
    [(_, _, repaired_id, status)] = state_rows(model, "customer_key = 'user4@example.com'")
    assert (repaired_id, status) == (right_id, "synced")
    with duckdb.connect(str(model), read_only=True) as connection:
        [(values,)] = connection.execute(
            "select synced_values from census_stripe.sync_state where customer_key = 'user4@example.com'"
        ).fetchall()
    assert json.loads(values)["metadata.plan"] == "enterprise"
    assert_stripe_equals_model(double, model)
