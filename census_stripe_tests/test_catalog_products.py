"""Products, synced to a real localstripe: created under the warehouse's own ids, updated field by
field, left alone under Create Only, skipped under Update Only, archived when they leave the model,
and bad rows rejected with reasons while the good ones sync.

localstripe's products know name, description, active, url, statement_descriptor, shippable and
metadata; not unit_label, tax_code or images (the Stripe double covers those fields' shape).
"""

import pytest

from census_stripe.objects import PRODUCT
from census_stripe.sync import RunOptions
from census_stripe_tests.catalog import reasons, run, state, stripe_for, sync_spec, write_model

PRODUCTS = """
model: products
object: product
behavior: {behavior}
archive_missing: {archive}
key: {{field: id, column: id}}
mapping:
  name: name
  description: description
  statement_descriptor: descriptor
  metadata.tier: tier
"""

DRY_RUN = RunOptions(dry_run=True)
CATALOG = [
    {"id": "starter", "name": "Starter", "description": "For one person", "descriptor": "STARTER", "tier": "1"},
    {"id": "team", "name": "Team", "description": "For a team", "descriptor": "TEAM", "tier": "2"},
    {"id": "enterprise", "name": "Enterprise", "description": None, "descriptor": "ENTERPRISE", "tier": "3"},
]


def products(behavior="update_or_create", archive=False):
    text = PRODUCTS.format(behavior=behavior, archive=str(archive).lower())
    # One key of a handful leaves the model: a share the default max_archive_rate (10 %) refuses.
    return sync_spec(text + ("max_archive_rate: 0.5\n" if archive else ""), "products")


def in_stripe(url) -> dict[str, dict]:
    return {p.id: p.values for p in stripe_for(url, PRODUCT).iter_all()}


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_model(path, "products", CATALOG)
    return path


def test_products_are_created_under_the_warehouses_ids_and_a_rerun_writes_nothing(warehouse, stripe_url):
    counts = run(warehouse, products(), stripe_url).counts()
    assert (counts["created"], counts["rejected"], counts["failed"]) == (3, 0, 0)
    held = in_stripe(stripe_url)
    assert set(held) == {"starter", "team", "enterprise"}
    assert held["team"]["name"] == "Team" and held["team"]["description"] == "For a team"
    assert held["team"]["statement_descriptor"] == "TEAM" and held["team"]["metadata.tier"] == "2"
    assert state(warehouse, "products") == {key: (key, "synced") for key in held}

    again = run(warehouse, products(), stripe_url, run_id="again").counts()
    assert (again["created"], again["updated"], again["unchanged"], again["stripe_api_calls"]) == (0, 0, 3, 0)


def test_a_changed_row_updates_only_the_fields_that_changed(warehouse, stripe_url):
    run(warehouse, products(), stripe_url)
    write_model(warehouse, "products", [CATALOG[0], {**CATALOG[1], "name": "Teams"}, CATALOG[2]])
    report = run(warehouse, products(), stripe_url, run_id="rename")
    [row] = report.plan.rows
    assert [(c.field, c.before, c.after) for c in row.changes] == [("name", "Team", "Teams")]
    assert report.counts()["updated"] == 1
    assert in_stripe(stripe_url)["team"]["name"] == "Teams"


def test_create_only_never_touches_a_product_already_in_stripe_and_records_its_id(warehouse, stripe_url):
    by_hand = stripe_for(stripe_url, PRODUCT)._service.create(params={"id": "team", "name": "Team (by hand)"})
    report = run(warehouse, products("create_only"), stripe_url)
    counts = report.counts()
    assert (counts["created"], counts["skipped_existing"], counts["updated"]) == (2, 1, 0)
    assert in_stripe(stripe_url)["team"]["name"] == "Team (by hand)"
    assert state(warehouse, "products")["team"] == (by_hand.id, "existing")

    # A product this sync created is never updated either, and nothing is looked at again.
    write_model(warehouse, "products", [{**row, "name": row["name"] + "!"} for row in CATALOG])
    counts = run(warehouse, products("create_only"), stripe_url, run_id="renamed").counts()
    assert (counts["created"], counts["updated"], counts["skipped_existing"]) == (0, 0, 3)
    assert in_stripe(stripe_url)["starter"]["name"] == "Starter"


def test_update_only_skips_products_stripe_does_not_have(warehouse, stripe_url):
    stripe_for(stripe_url, PRODUCT)._service.create(params={"id": "starter", "name": "Old name"})
    report = run(warehouse, products("update_only"), stripe_url)
    counts = report.counts()
    assert (counts["updated"], counts["created"], counts["skipped_not_found"]) == (1, 0, 2)
    assert set(in_stripe(stripe_url)) == {"starter"}
    skipped = {row.candidate.key: row.reason for row in report.plan.rows if row.reason}
    assert skipped["team"] == "no Stripe product has this id (Update Only never creates)"


def test_products_that_leave_the_model_are_archived_and_come_back_when_they_return(warehouse, stripe_url):
    run(warehouse, products(archive=True), stripe_url)
    write_model(warehouse, "products", CATALOG[:2])

    planned = run(warehouse, products(archive=True), stripe_url, run_id="dry", options=DRY_RUN).counts()
    assert (planned["planned_archives"], planned["archived"]) == (1, 0)
    assert in_stripe(stripe_url)["enterprise"]["active"] == "true"

    counts = run(warehouse, products(archive=True), stripe_url, run_id="archive").counts()
    assert (counts["archived"], counts["updated"], counts["unchanged"]) == (1, 0, 2)
    assert in_stripe(stripe_url)["enterprise"]["active"] == "false"  # archived, never deleted
    assert state(warehouse, "products")["enterprise"] == ("enterprise", "archived")
    assert run(warehouse, products(archive=True), stripe_url, run_id="still gone").counts()["stripe_api_calls"] == 0

    write_model(warehouse, "products", CATALOG)
    report = run(warehouse, products(archive=True), stripe_url, run_id="back")
    [row] = report.plan.rows
    assert [(c.field, c.before, c.after) for c in row.changes] == [("active", "false", "true")]
    assert in_stripe(stripe_url)["enterprise"]["active"] == "true"


def test_bad_rows_are_rejected_with_their_reasons_while_the_good_ones_sync(warehouse, stripe_url):
    write_model(
        warehouse,
        "products",
        [
            *CATALOG,
            {"id": "loud", "name": "Loud", "description": None, "descriptor": "A DESCRIPTOR FAR TOO LONG", "tier": "1"},
            {"id": "nameless", "name": None, "description": "?", "descriptor": None, "tier": "1"},
            {"id": "twice", "name": "Twice", "description": None, "descriptor": None, "tier": "1"},
            {"id": "twice", "name": "Twice again", "description": None, "descriptor": None, "tier": "1"},
        ],
    )
    report = run(warehouse, products(), stripe_url)
    assert reasons(report) == {
        "loud": "value too long: statement_descriptor has 25 characters, Stripe allows 22",
        "nameless": "name is empty: Stripe needs it for a product",
        "twice": "duplicate key: 2 model rows share id 'twice'",
    }
    assert set(in_stripe(stripe_url)) == {"starter", "team", "enterprise"}


def test_products_keyed_by_an_external_id_in_metadata_are_found_by_listing(tmp_path, stripe_url):
    warehouse = tmp_path / "warehouse.duckdb"
    write_model(warehouse, "plans", [{"sku": "SKU-1", "name": "One"}, {"sku": "SKU-2", "name": "Two"}])
    spec = sync_spec(
        "model: plans\nobject: product\nbehavior: update_or_create\n"
        "key: {field: metadata.sku, column: sku}\nmapping: {name: name}\n",
        "plans",
    )
    existing = stripe_for(stripe_url, PRODUCT)._service.create(params={"name": "Old", "metadata": {"sku": "SKU-1"}})
    report = run(warehouse, spec, stripe_url)
    assert (report.plan.lookup, report.counts()["updated"], report.counts()["created"]) == ("list_all", 1, 1)
    held = {values["metadata.sku"]: (stripe_id, values["name"]) for stripe_id, values in in_stripe(stripe_url).items()}
    assert held["SKU-1"] == (existing.id, "One") and held["SKU-2"][1] == "Two"
