"""Prices, synced to the Stripe test double (localstripe has no Prices): each row's product given as
the product sync's key and resolved through that sync's state; a changed amount makes exactly one
new price that takes the lookup key over and archives the old one, also when a run stopped halfway;
bad rows rejected with reasons while the good ones sync; and every behavior."""

import dagster as dg
import pytest

from census_stripe.objects import PRICE
from census_stripe.orchestration.metadata import report_metadata
from census_stripe.sync import RunOptions
from census_stripe_tests.catalog import catalog_asset, reasons, run, state, stripe_for, sync_spec, write_model
from census_stripe_tests.conftest import resources

PRODUCTS = """
model: products
object: product
behavior: update_or_create
key: {field: id, column: id}
mapping: {name: name}
"""

PRICES = """
model: prices
object: price
behavior: {behavior}
archive_missing: {archive}
product_sync: products
key: {{field: lookup_key, column: lookup_key}}
mapping:
  product: product
  currency: currency
  unit_amount: amount
  recurring.interval: every
  nickname: nickname
"""

PRICE_ROWS = [
    {"lookup_key": "team_monthly", "product": "team", "currency": "usd", "amount": "1000", "every": "month"},
    {"lookup_key": "team_yearly", "product": "team", "currency": "usd", "amount": "10000", "every": "year"},
    {"lookup_key": "team_monthly_eur", "product": "team", "currency": "EUR", "amount": "900", "every": "month"},
    {"lookup_key": "pro_monthly", "product": "pro", "currency": "usd", "amount": "2500", "every": "month"},
]
DRY_RUN = RunOptions(dry_run=True)


def prices(behavior="update_or_create", archive=False):
    text = PRICES.format(behavior=behavior, archive=str(archive).lower())
    # One key of a handful leaves the model: a share the default max_archive_rate (10 %) refuses.
    return sync_spec(text + ("max_archive_rate: 0.5\n" if archive else ""), "prices")


def with_nicknames(rows: list[dict]) -> list[dict]:
    return [{"nickname": None, **row} for row in rows]


@pytest.fixture
def warehouse(tmp_path, double):
    """Two products synced to the double by their own sync, and a model of four prices."""
    path = tmp_path / "warehouse.duckdb"
    write_model(path, "products", [{"id": "team", "name": "Team"}, {"id": "pro", "name": "Pro"}])
    assert run(path, sync_spec(PRODUCTS, "products"), double.url).counts()["created"] == 2
    write_model(path, "prices", with_nicknames(PRICE_ROWS))
    return path


def held(double) -> dict[str, dict]:
    """Every price in the double, archived ones included, by id."""
    return {p.id: p.values for p in stripe_for(double.url, PRICE).iter_all()}


def holder(double, lookup_key: str) -> tuple[str, dict]:
    [(price_id, values)] = [(i, v) for i, v in held(double).items() if v["lookup_key"] == lookup_key]
    return price_id, values


def change_amount(warehouse, lookup_key: str, amount: str) -> None:
    rows = [{**row, "amount": amount} if row["lookup_key"] == lookup_key else row for row in PRICE_ROWS]
    write_model(warehouse, "prices", with_nicknames(rows))


def test_prices_are_created_for_their_products_and_a_rerun_writes_nothing(warehouse, double):
    counts = run(warehouse, prices(), double.url).counts()
    assert (counts["created"], counts["rejected"], counts["failed"]) == (4, 0, 0)
    price_id, values = holder(double, "team_monthly_eur")
    assert (values["product"], values["currency"], values["unit_amount"]) == ("team", "eur", "900")
    assert values["recurring.interval"] == "month" and values["active"] == "true"
    assert holder(double, "pro_monthly")[1]["product"] == "pro"
    assert state(warehouse, "prices")["team_monthly_eur"] == (price_id, "synced")

    again = run(warehouse, prices(), double.url, run_id="again").counts()
    assert (again["created"], again["updated"], again["new_versions"], again["stripe_api_calls"]) == (0, 0, 0, 0)


def test_a_changed_amount_makes_one_new_price_and_archives_the_old_one(warehouse, double):
    run(warehouse, prices(), double.url)
    old_id, _ = holder(double, "team_monthly")
    change_amount(warehouse, "team_monthly", "1200")

    planned = run(warehouse, prices(), double.url, run_id="dry", options=DRY_RUN)
    [row] = planned.plan.rows
    assert row.action.value == "new_version"
    assert (planned.counts()["planned_new_versions"], planned.counts()["planned_archives"]) == (1, 1)

    before = double.stats()
    report = run(warehouse, prices(), double.url, run_id="raise")
    stats = double.stats()
    assert stats["done_price_create"] - before.get("done_price_create", 0) == 1
    assert stats["done_price_update"] - before.get("done_price_update", 0) == 1  # the archive
    counts = report.counts()
    assert (counts["new_versions"], counts["archived"], counts["created"], counts["updated"]) == (1, 1, 0, 0)

    new_id, new = holder(double, "team_monthly")
    assert new_id != old_id and (new["unit_amount"], new["active"]) == ("1200", "true")
    old = held(double)[old_id]  # archived, never deleted, and no longer holding the key
    assert (old["unit_amount"], old["active"], old["lookup_key"]) == ("1000", "false", None)
    assert state(warehouse, "prices")["team_monthly"] == (new_id, "synced")
    assert run(warehouse, prices(), double.url, run_id="again").counts()["stripe_api_calls"] == 0


def test_the_preview_says_what_a_new_version_changes(warehouse, double):
    run(warehouse, prices(), double.url)
    change_amount(warehouse, "team_monthly", "1200")
    metadata = report_metadata(run(warehouse, prices(), double.url, run_id="dry", options=DRY_RUN), lambda _: None)
    [record] = metadata["preview"].value.records
    assert record.data["changes"].startswith("new version of price team_monthly: 10.00 → 12.00 USD/month")
    assert "summary" in metadata and "would make 1 new versions" in metadata["summary"].value


def test_a_run_stopped_between_the_new_price_and_the_archive_converges_without_another_price(warehouse, double):
    run(warehouse, prices(), double.url)
    old_id, old = holder(double, "team_monthly")
    # What a run killed right after Stripe created the new version leaves: the new price holds the
    # lookup key, the old one is still active, and the state still names the old one.
    wanted = {"lookup_key": "team_monthly", "product": old["product"], "currency": "usd", "unit_amount": "1200"}
    new = stripe_for(double.url, PRICE)._service.create(
        params=PRICE.new_version_params({**wanted, "recurring.interval": "month"})
    )
    change_amount(warehouse, "team_monthly", "1200")

    before = double.stats()
    counts = run(warehouse, prices(), double.url, run_id="rerun").counts()
    stats = double.stats()
    assert stats.get("done_price_create", 0) == before.get("done_price_create", 0)  # no second new price
    assert counts["new_versions"] == 1
    assert held(double)[old_id]["active"] == "false"
    assert holder(double, "team_monthly")[0] == new.id
    assert state(warehouse, "prices")["team_monthly"] == (new.id, "synced")
    assert sum(1 for values in held(double).values() if values["unit_amount"] == "1200") == 1


def test_a_changed_nickname_updates_the_same_price(warehouse, double):
    run(warehouse, prices(), double.url)
    price_id, _ = holder(double, "pro_monthly")
    rows = [{**row, "nickname": "Pro" if row["lookup_key"] == "pro_monthly" else None} for row in PRICE_ROWS]
    write_model(warehouse, "prices", rows)
    counts = run(warehouse, prices(), double.url, run_id="nickname").counts()
    assert (counts["updated"], counts["new_versions"], counts["created"]) == (1, 0, 0)
    assert holder(double, "pro_monthly")[0] == price_id
    assert holder(double, "pro_monthly")[1]["nickname"] == "Pro"


def test_bad_rows_are_rejected_with_their_reasons_while_the_good_ones_sync(warehouse, double):
    bad = [
        {"lookup_key": "ghost_monthly", "product": "ghost", "currency": "usd", "amount": "100", "every": "month"},
        {"lookup_key": "team_dollars", "product": "team", "currency": "dollars", "amount": "100", "every": "month"},
        {"lookup_key": "team_refund", "product": "team", "currency": "usd", "amount": "-100", "every": "month"},
        {"lookup_key": "pro_monthly", "product": "pro", "currency": "usd", "amount": "2600", "every": "month"},
    ]
    write_model(warehouse, "prices", with_nicknames(PRICE_ROWS + bad))
    report = run(warehouse, prices(), double.url)
    assert reasons(report) == {
        "ghost_monthly": "unknown product 'ghost': not synced by products",
        "team_dollars": "bad currency: currency must be a three-letter ISO code such as usd, got 'dollars'",
        "team_refund": "negative amount: unit_amount must be 0 or more, got '-100'",
        "pro_monthly": "duplicate key: 2 model rows share lookup_key 'pro_monthly'",
    }
    assert report.counts()["created"] == 3
    assert {values["lookup_key"] for values in held(double).values()} == {
        "team_monthly",
        "team_yearly",
        "team_monthly_eur",
    }


def test_create_only_leaves_existing_prices_alone_and_update_only_never_creates(warehouse, double):
    write_model(warehouse, "prices", with_nicknames(PRICE_ROWS[:2]))
    run(warehouse, prices(), double.url)
    first_id, _ = holder(double, "team_monthly")
    write_model(warehouse, "prices", with_nicknames([{**PRICE_ROWS[0], "amount": "1500"}, *PRICE_ROWS[1:]]))

    counts = run(warehouse, prices("update_only"), double.url, run_id="update only").counts()
    assert (counts["new_versions"], counts["skipped_not_found"], counts["created"]) == (1, 2, 0)

    write_model(warehouse, "prices", with_nicknames([{**PRICE_ROWS[0], "amount": "2000"}, *PRICE_ROWS[1:]]))
    counts = run(warehouse, prices("create_only"), double.url, run_id="create only").counts()
    # team_monthly changed but is never touched; team_yearly did not change, so it is not even looked at.
    assert (counts["created"], counts["skipped_existing"], counts["new_versions"], counts["unchanged"]) == (2, 1, 0, 1)
    assert holder(double, "team_monthly")[1]["unit_amount"] == "1500"
    assert holder(double, "team_monthly")[0] != first_id


def test_prices_that_leave_the_model_are_archived(warehouse, double):
    run(warehouse, prices(archive=True), double.url)
    gone_id, _ = holder(double, "team_yearly")
    write_model(warehouse, "prices", with_nicknames([row for row in PRICE_ROWS if row["lookup_key"] != "team_yearly"]))
    counts = run(warehouse, prices(archive=True), double.url, run_id="archive").counts()
    assert (counts["archived"], counts["unchanged"]) == (1, 3)
    assert held(double)[gone_id]["active"] == "false"
    assert state(warehouse, "prices")["team_yearly"] == (gone_id, "archived")

    # Back in the model: the same price, active again. Gone again: archived again, not a replay of
    # the first archive (Stripe would answer an idempotency key it knows with the old response).
    write_model(warehouse, "prices", with_nicknames(PRICE_ROWS))
    assert run(warehouse, prices(archive=True), double.url, run_id="back").counts()["updated"] == 1
    assert held(double)[gone_id]["active"] == "true"
    write_model(warehouse, "prices", with_nicknames([row for row in PRICE_ROWS if row["lookup_key"] != "team_yearly"]))
    assert run(warehouse, prices(archive=True), double.url, run_id="again").counts()["archived"] == 1
    assert held(double)[gone_id]["active"] == "false"


def test_in_dagster_the_price_sync_runs_after_the_product_sync_it_depends_on(tmp_path, double):
    path = tmp_path / "warehouse.duckdb"
    write_model(path, "products", [{"id": "team", "name": "Team"}, {"id": "pro", "name": "Pro"}])
    write_model(path, "prices", with_nicknames(PRICE_ROWS))
    products_asset = catalog_asset(tmp_path, "products", PRODUCTS)
    prices_asset = catalog_asset(tmp_path, "prices", PRICES.format(behavior="update_or_create", archive="false"))
    products_key, prices_key = dg.AssetKey(["stripe", "products"]), dg.AssetKey(["stripe", "prices"])
    assert products_key in prices_asset.asset_deps[prices_key]

    result = dg.materialize([prices_asset, products_asset], resources=resources(path, double.url))
    assert [event.asset_key for event in result.get_asset_materialization_events()] == [products_key, prices_key]
    [prices_run] = result.asset_materializations_for_node(prices_asset.op.name)
    assert (prices_run.metadata["created"].value, prices_run.metadata["rejected"].value) == (4, 0)
    assert holder(double, "pro_monthly")[1]["product"] == "pro"
