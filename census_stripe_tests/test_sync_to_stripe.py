"""The sync asset end to end: a dbt-built DuckDB model, materialized through Dagster into a real
local Stripe server, checked by reading Stripe back through the API."""

import json
import re
import time
from pathlib import Path

import duckdb
import pytest

from census_stripe.demo.seed_data import BAD_ROWS, DEFAULT_CUSTOMERS, generate
from census_stripe.orchestration.metadata import NO_KEY
from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.stripe_client.client import StripeObjects
from census_stripe_tests.conftest import DEMO_SYNC, SyncRunner
from census_stripe_tests.synthetic import make_model

VALID_USERS = [u for u in generate(DEFAULT_CUSTOMERS)["raw_users"] if u["user_id"] not in BAD_ROWS]


def stripe_by_email(customers: StripeObjects) -> dict[str, dict]:
    everything = list(customers.iter_all())
    by_email = {c.values["email"]: c.values | {"id": c.id} for c in everything}
    assert len(by_email) == len(everything), "two Stripe customers share an email"
    return by_email


def model_row(warehouse_path: Path, external_id: str) -> dict:
    with duckdb.connect(str(warehouse_path), read_only=True) as connection:
        cursor = connection.execute("select * from main.stripe_customers where external_id = ?", [external_id])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone(), strict=True))


def query(warehouse_path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def execute(warehouse_path: Path, sql: str) -> None:
    with duckdb.connect(str(warehouse_path)) as connection:
        connection.execute(sql)


def write_sync(tmp_path: Path, name: str, **replacements: str) -> Path:
    text = DEMO_SYNC.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name / "defs.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_first_run_creates_every_valid_customer_with_its_mapped_fields(sync_runner, stripe_customers, warehouse_path):
    runner = sync_runner()
    result = runner.run()

    assert runner.counts(result) == {
        "rows_read": 300,
        "planned_creates": 294,
        "planned_updates": 0,
        "unchanged": 0,
        "rejected": 6,
        "skipped_not_found": 0,
        "created": 294,
        "recreated": 0,
        "updated": 0,
        "failed": 0,
        # Which account the key reaches (asked once, then remembered), a write-access check, one
        # listing of the (empty) account, then one create per customer.
        "stripe_api_calls": 297,
        "stripe_lookup_calls": 1,
        "stripe_duplicate_keys": 0,
        "stripe_rate_limited": 0,
        "state_rows_repaired": 0,
    }
    in_stripe = stripe_by_email(stripe_customers)
    assert set(in_stripe) == {u["email"].strip() for u in VALID_USERS}

    row = model_row(warehouse_path, "usr_000001")
    customer = in_stripe[row["email"]]
    assert customer["name"] == row["full_name"]
    assert customer["phone"] == row["phone"]
    assert customer["address.line1"] == row["address_line1"]
    assert customer["address.city"] == row["city"]
    assert customer["address.postal_code"] == row["postal_code"]
    assert customer["address.country"] == row["country"]
    assert customer["metadata.external_id"] == "usr_000001"
    assert customer["metadata.plan"] == row["plan"]
    assert customer["metadata.lifetime_value"] == str(row["lifetime_value"])
    assert customer["metadata.signup_date"] == row["signup_date"].isoformat()
    assert customer["metadata.synced_by"] == "census_stripe"
    # Surrounding spaces are trimmed; the capitals a person typed are kept.
    assert "Grace.Hopper10@Example.COM" in in_stripe


def test_bad_rows_are_rejected_with_reasons_while_the_good_rows_sync(sync_runner, warehouse_path):
    runner = sync_runner()
    result = runner.run()
    rejected = {(r.data["key"], r.data["reason"]) for r in runner.metadata(result)["rejected_rows"].records}
    assert rejected == {
        ("not-an-email", "invalid email: 'not-an-email'"),
        ("jane.doe@", "invalid email: 'jane.doe@'"),
        (NO_KEY, "null key: column 'email' is empty"),
        ("Casey.Jordan@Example.com", "duplicate key: 2 model rows share email 'casey.jordan@example.com'"),
        ("casey.jordan@example.com", "duplicate key: 2 model rows share email 'casey.jordan@example.com'"),
        ("maximilian.long@example.com", "value too long: name has 315 characters, Stripe allows 256"),
    }
    history = query(warehouse_path, "select kind, count(*) from census_stripe.sync_rejections group by kind")
    assert history == [("rejected", 6)]


def test_state_table_holds_the_stripe_ids_for_analysts_to_join(sync_runner, stripe_customers, warehouse_path):
    sync_runner().run()
    in_stripe = stripe_by_email(stripe_customers)
    joined = query(
        warehouse_path,
        """
        select lower(trim(m.email)), s.stripe_customer_id, s.status
        from main.stripe_customers m
        join census_stripe.sync_state s on s.customer_key = lower(trim(m.email)) and s.sync_name = 'customers'
        where s.status = 'synced'
        """,
    )
    assert len(joined) == 294
    assert {stripe_id for _, stripe_id, _ in joined} == {c["id"] for c in in_stripe.values()}


def test_second_run_writes_nothing_and_calls_stripe_zero_times(sync_runner, stripe_customers):
    runner = sync_runner()
    runner.run()
    second = runner.counts(runner.run())
    assert second["created"] == second["updated"] == second["failed"] == 0
    assert second["stripe_api_calls"] == 0
    assert second["unchanged"] == 294 and second["rejected"] == 6
    assert len(stripe_by_email(stripe_customers)) == 294


def test_a_model_change_sends_only_the_changed_fields_of_the_changed_rows(
    sync_runner, stripe_customers, warehouse_path
):
    runner = sync_runner()
    runner.run()
    first, second = model_row(warehouse_path, "usr_000001"), model_row(warehouse_path, "usr_000002")
    customer_id = stripe_by_email(stripe_customers)[first["email"]]["id"]
    # A field this sync does not change must survive the update: only what differs is sent.
    stripe_customers._service.update(customer_id, params={"description": "set by hand"})
    execute(warehouse_path, "update main.stripe_customers set plan = 'enterprise' where external_id = 'usr_000001'")
    execute(warehouse_path, "update main.stripe_customers set city = 'Oslo' where external_id = 'usr_000002'")

    result = runner.run()
    counts = runner.counts(result)
    assert (counts["planned_updates"], counts["updated"], counts["created"], counts["unchanged"]) == (2, 2, 0, 292)
    assert counts["stripe_api_calls"] == 3  # the write-access check, then the two updates
    preview = {(r.data["key"], r.data["changes"]) for r in runner.metadata(result)["preview"].records}
    assert preview == {
        (first["email"], f"update — metadata.plan: {first['plan']} → enterprise"),
        (second["email"], f"update — address.city: {second['city']} → Oslo"),
    }
    after = stripe_by_email(stripe_customers)
    assert after[first["email"]]["metadata.plan"] == "enterprise"
    assert after[first["email"]]["description"] == "set by hand"
    assert after[second["email"]]["address.city"] == "Oslo"
    # The rest of the address is sent with the city, because Stripe replaces addresses whole.
    assert after[second["email"]]["address.line1"] == second["address_line1"]


def test_dry_run_records_the_plan_and_writes_nothing(sync_runner, stripe_customers, warehouse_path):
    runner = sync_runner()
    result = runner.run(dry_run=True)
    assert result.get_asset_materialization_events() == []
    metadata = runner.metadata(result)
    assert metadata["dry_run"] is True
    assert (metadata["planned_creates"], metadata["created"], metadata["rejected"]) == (294, 0, 6)
    assert len(metadata["preview"].records) == 50
    assert metadata["summary"].startswith("**Dry run: would create 294 and")
    assert "showing 50 of 294" in metadata["summary"]
    assert list(stripe_customers.iter_all()) == []
    assert query(warehouse_path, "select count(*) from census_stripe.sync_state") == [(0,)]


def test_update_only_updates_matches_and_never_creates(sync_runner, stripe_customers, warehouse_path, tmp_path):
    row = model_row(warehouse_path, "usr_000001")
    # Stripe's email filter is case-sensitive; the sync's matching is not.
    existing = stripe_customers._service.create(params={"email": row["email"].upper(), "name": "Old Name"})
    stripe_customers._service.create(params={"email": "someone.else@example.com"})
    runner = sync_runner(write_sync(tmp_path, "update_only", update_or_create="update_only"))

    result = runner.run()
    counts = runner.counts(result)
    assert (counts["planned_updates"], counts["updated"], counts["created"]) == (1, 1, 0)
    assert counts["skipped_not_found"] == 293
    skipped = runner.metadata(result)["skipped_rows"].records
    assert "Update Only never creates" in skipped[0].data["reason"]
    customers = {c.id: c.values for c in stripe_customers.iter_all()}
    assert len(customers) == 2
    assert customers[existing.id]["name"] == row["full_name"]
    assert customers[existing.id]["email"] == row["email"]


def test_several_stripe_customers_with_one_email_are_never_guessed_between(
    sync_runner, stripe_customers, warehouse_path
):
    row = model_row(warehouse_path, "usr_000001")
    ids = sorted(
        stripe_customers._service.create(params={"email": email}).id for email in (row["email"], row["email"].title())
    )
    runner = sync_runner()
    result = runner.run()
    reasons = {r.data["key"]: r.data["reason"] for r in runner.metadata(result)["rejected_rows"].records}
    assert reasons[row["email"]] == f"several Stripe customers share this email: {ids[0]}, {ids[1]}"
    counts = runner.counts(result)
    assert (counts["created"], counts["rejected"]) == (293, 7)


def test_external_id_key_matches_on_metadata(sync_runner, stripe_customers, tmp_path):
    path = write_sync(
        tmp_path,
        "by_external_id",
        **{
            "field: email": "field: metadata.external_id",
            "column: email": "column: external_id",
            "  metadata.external_id: external_id\n": "  email: email\n",
        },
    )
    runner = sync_runner(path)
    counts = runner.counts(runner.run())
    # Emails are no longer keys: a missing or repeated email is allowed, an invalid one is not.
    assert (counts["created"], counts["rejected"]) == (297, 3)
    assert runner.counts(runner.run())["stripe_api_calls"] == 0
    ids = [c.values["metadata.external_id"] for c in stripe_customers.iter_all()]
    assert len(ids) == len(set(ids)) == 297


def test_a_customer_deleted_in_stripe_is_created_again(sync_runner, stripe_customers, warehouse_path):
    runner = sync_runner()
    runner.run()
    row = model_row(warehouse_path, "usr_000003")
    deleted = stripe_by_email(stripe_customers)[row["email"]]["id"]
    stripe_customers._service.delete(deleted)
    execute(warehouse_path, "update main.stripe_customers set plan = 'pro' where external_id = 'usr_000003'")

    counts = runner.counts(runner.run())
    # The update met a 404; the key was looked up, Stripe had none, so it was created anew.
    assert (counts["planned_creates"], counts["created"], counts["recreated"], counts["failed"]) == (1, 1, 1, 0)
    recreated = stripe_by_email(stripe_customers)[row["email"]]
    assert recreated["id"] != deleted and recreated["metadata.plan"] == "pro"
    [(state_id,)] = query(
        warehouse_path,
        f"select stripe_customer_id from census_stripe.sync_state where customer_key = '{row['email'].lower()}'",
    )
    assert state_id == recreated["id"]


def test_update_only_reports_a_deleted_customer_as_skipped_on_every_run(sync_runner, stripe_customers, warehouse_path):
    sync_runner().run()
    row = model_row(warehouse_path, "usr_000004")
    deleted = stripe_by_email(stripe_customers)[row["email"]]["id"]
    stripe_customers._service.delete(deleted)
    execute(warehouse_path, "update main.stripe_customers set plan = 'pro' where external_id = 'usr_000004'")
    update_only = sync_runner(write_sync(warehouse_path.parent, "customers", update_or_create="update_only"))

    for _ in range(2):  # never a silent skip: the next run reports it again
        result = update_only.run()
        counts = update_only.counts(result)
        assert (counts["skipped_not_found"], counts["created"], counts["failed"]) == (1, 0, 0)
        [skipped] = update_only.metadata(result)["skipped_rows"].records
        assert skipped.data["reason"] == f"customer {deleted} was deleted in Stripe (Update Only never creates)"
    assert row["email"] not in stripe_by_email(stripe_customers)


def refusing_rows(sync_runner, warehouse_path: Path, refused: list[str], **settings: str):
    """The demo sync after a first run without the `refused` rows; then they come back, new to
    Stripe, and the sync maps `shipping.name` from a column only they have: localstripe refuses to
    create a customer with `shipping` (400, "Unexpected shipping")."""
    listed = ", ".join(f"'{external_id}'" for external_id in refused)
    execute(
        warehouse_path,
        f"""create table main.held as select * from main.stripe_customers where external_id in ({listed});
        delete from main.stripe_customers where external_id in ({listed});
        update main.stripe_customers set address_line2 = null""",
    )
    sync_runner().run()
    execute(
        warehouse_path,
        "insert into main.stripe_customers select * replace ('Apt 4' as address_line2) from main.held",
    )
    path = write_sync(warehouse_path.parent, "customers", **{"address.line2:": "shipping.name:"}, **settings)
    return sync_runner(path)


def test_rows_stripe_refuses_are_recorded_and_retried_next_run(sync_runner, warehouse_path):
    tolerant = {"update_or_create": "update_or_create\n  max_failure_rate: 1.0"}
    runner = refusing_rows(sync_runner, warehouse_path, ["usr_000004"], **tolerant)
    row = model_row(warehouse_path, "usr_000004")

    result = runner.run()
    counts = runner.counts(result)
    assert (counts["created"], counts["failed"]) == (0, 1)
    [failed] = runner.metadata(result)["failed_rows"].records
    assert "Unexpected shipping" in failed.data["reason"]
    status = query(
        warehouse_path, f"select status, error from census_stripe.sync_state where customer_key = '{row['email']}'"
    )
    assert status[0][0] == "failed" and "Unexpected shipping" in status[0][1]
    # Failed rows are not marked as synced, so the next run tries them again.
    assert runner.counts(runner.run())["failed"] == 1
    assert query(warehouse_path, "select count(*) from census_stripe.sync_rejections where kind = 'failed'") == [(2,)]


# Stripe refuses the emails of users 0 to 9, then of users 0 to 10: 10 and 11 of 100 writes.
@pytest.mark.parametrize(
    ("refused_emails", "refused", "passed"), [("^user[0-9]@", 10, True), ("^user([0-9]|10)@", 11, False)]
)
def test_the_run_fails_when_more_than_10_percent_of_writes_fail(double, tmp_path, refused_emails, refused, passed):
    """`max_failure_rate` is 10 % by default: up to it the run succeeds, past it the blocking check fails it."""
    warehouse = tmp_path / "warehouse.duckdb"
    make_model(warehouse, 100)
    double.configure(invalid_emails=refused_emails)
    result = SyncRunner(load_sync(DEMO_SYNC), warehouse, double.url).run(raise_on_error=False)
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "failed_writes_below_threshold"]
    assert (check.passed, check.description) == (passed, f"{refused} of 100 Stripe writes failed")
    assert result.success is passed
    assert double.stats()["customers"] == 100 - refused


def test_the_run_fails_visibly_when_too_many_writes_fail(sync_runner, warehouse_path):
    runner = refusing_rows(sync_runner, warehouse_path, ["usr_000004", "usr_000005"])
    execute(warehouse_path, "update main.stripe_customers set plan = 'pro' where external_id = 'usr_000006'")

    result = runner.run(raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "blocking asset check failed with ERROR severity" in failure.error.message
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "failed_writes_below_threshold"]
    assert (check.passed, check.description) == (False, "2 of 3 Stripe writes failed")
    # The materialization is recorded all the same, with the reasons.
    reasons = runner.metadata(result)["failure_reasons"].records
    assert [r.data["rows"] for r in reasons] == ["2"] and "Unexpected shipping" in reasons[0].data["reason"]
    # The write that succeeded is in the state table.
    [(status,)] = query(
        warehouse_path,
        "select status from census_stripe.sync_state s join main.stripe_customers m "
        "on s.customer_key = lower(trim(m.email)) where m.external_id = 'usr_000006'",
    )
    assert status == "synced"


def test_the_summary_recaps_the_run(sync_runner):
    runner = sync_runner()
    summary = runner.metadata(runner.run())["summary"]
    assert summary.startswith("**Created 294 Stripe customers.**")
    assert "- 294 created, 0 updated\n- 0 unchanged, 6 rejected\n- 0 failed\n" in summary


def test_a_local_stripe_server_gets_customer_ids_not_dead_links(sync_runner, stripe_customers):
    runner = sync_runner()
    links = runner.metadata(runner.run())["stripe_customers"]
    prefix, _, ids = links.partition(": ")
    assert prefix == "A local Stripe server, without a dashboard to link to"
    written = {customer.id for customer in stripe_customers.iter_all()}
    assert len(ids.split(", ")) == 5 and set(ids.split(", ")) <= written


@pytest.mark.parametrize("config_key", ["dry_run", "full_resync"])
def test_run_config_is_documented_for_the_launchpad(sync_runner, config_key):
    schema = sync_runner().asset.op.config_schema.as_field().config_type
    assert config_key in json.dumps(sorted(schema.fields))
    assert schema.fields[config_key].description


def test_full_resync_repairs_a_customer_edited_by_hand_in_stripe(sync_runner, stripe_customers, warehouse_path):
    runner = sync_runner()
    runner.run()
    row = model_row(warehouse_path, "usr_000001")
    customer_id = stripe_by_email(stripe_customers)[row["email"]]["id"]
    stripe_customers._service.update(customer_id, params={"name": "Edited In Dashboard"})

    # The state still matches the model, so a normal run does not notice the edit...
    assert runner.counts(runner.run())["updated"] == 0
    # ...a full resync compares with what Stripe holds and repairs it.
    result = runner.run(full_resync=True)
    counts = runner.counts(result)
    assert (counts["planned_updates"], counts["updated"], counts["created"]) == (1, 1, 0)
    assert counts["stripe_lookup_calls"] == 3  # 294 customers listed once, 100 per call
    [change] = runner.metadata(result)["preview"].records
    assert change.data["changes"] == f"update — name: Edited In Dashboard → {row['full_name']}"
    assert stripe_by_email(stripe_customers)[row["email"]]["name"] == row["full_name"]


def test_full_resync_under_update_only_reports_a_customer_deleted_in_stripe(
    sync_runner, stripe_customers, warehouse_path
):
    sync_runner().run()
    row = model_row(warehouse_path, "usr_000002")
    deleted = stripe_by_email(stripe_customers)[row["email"]]["id"]
    stripe_customers._service.delete(deleted)
    update_only = sync_runner(write_sync(warehouse_path.parent, "customers", update_or_create="update_only"))

    result = update_only.run(full_resync=True)
    counts = update_only.counts(result)
    assert (counts["skipped_not_found"], counts["created"], counts["updated"]) == (1, 0, 0)
    [skipped] = update_only.metadata(result)["skipped_rows"].records
    assert skipped.data["reason"] == f"customer {deleted} was deleted in Stripe (Update Only never creates)"


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_duplicates_in_stripe_policy_picks_one_and_reports_them(
    sync_runner, stripe_customers, warehouse_path, tmp_path, policy
):
    row = model_row(warehouse_path, "usr_000001")
    older = stripe_customers._service.create(params={"email": row["email"]})
    time.sleep(1.1)  # Stripe's `created` counts seconds
    newer = stripe_customers._service.create(params={"email": row["email"].upper()})
    path = write_sync(tmp_path, policy, **{"object: customer": f"object: customer\n  duplicates_in_stripe: {policy}"})
    runner = sync_runner(path)

    result = runner.run()
    counts = runner.counts(result)
    assert (counts["stripe_duplicate_keys"], counts["rejected"], counts["created"]) == (1, 6, 293)
    chosen = older.id if policy == "oldest" else newer.id
    [duplicate] = runner.metadata(result)["stripe_duplicates"].records
    assert duplicate.data == {
        "key": row["email"],
        "stripe_customer_ids": ", ".join(sorted([older.id, newer.id])),
        "decision": f"used {chosen}",
    }
    customers = {c.id: c.values for c in stripe_customers.iter_all()}
    assert customers[chosen]["name"] == row["full_name"]
    assert customers[older.id if chosen == newer.id else newer.id]["name"] is None


def test_rejected_rows_accumulate_per_run(sync_runner, warehouse_path):
    runner = sync_runner()
    runs = [runner.run().run_id for _ in range(2)]
    per_run = query(
        warehouse_path, "select run_id, count(*) from census_stripe.sync_rejections group by run_id order by 2"
    )
    assert sorted(per_run) == sorted((run_id, 6) for run_id in runs)
    reasons = query(
        warehouse_path,
        "select distinct reason from census_stripe.sync_rejections where key_value = 'not-an-email'",
    )
    assert reasons == [("invalid email: 'not-an-email'",)]


def test_personal_data_can_be_masked_in_the_metadata(sync_runner, warehouse_path, tmp_path):
    runner = sync_runner(
        write_sync(tmp_path, "masked", **{"object: customer": "object: customer\n  mask_personal_data: true"})
    )
    metadata = runner.metadata(runner.run(dry_run=True))
    shown = json.dumps([r.data for name in ("preview", "rejected_rows") for r in metadata[name].records], default=str)
    with duckdb.connect(str(warehouse_path), read_only=True) as connection:
        personal = connection.execute(
            "select email, full_name, phone, address_line1 from main.stripe_customers"
        ).fetchall()
    leaked = {value for row in personal for value in row if value and len(value) > 3 and value.strip() in shown}
    assert leaked == set()
    # Each row's key, an email as the model holds it, keeps its first character and its domain.
    keys = [record.data["key"] for record in metadata["preview"].records]
    emails = [email.partition("@") for email, *_ in personal if email and "@" in email]
    assert keys and set(keys) <= {f"{local[:1]}***@{domain}" for local, _, domain in emails}
    assert "invalid email: 'n***'" in shown  # reasons quote values; masked too
    # What is not personal stays readable: a create's field names, and the reasons' own words.
    changes = [record.data["changes"] for record in metadata["preview"].records]
    assert changes and all(re.fullmatch(r"create — name: \w\*\*\*; .*\+\d+ more", change) for change in changes)
    assert "value too long: name has 315 characters, Stripe allows 256" in shown
