"""Guards on destructive change, through Dagster: a run that would archive more than max_archive_rate
of what the sync has in Stripe, or anything from an empty model, or whose model's row count moved
more than max_row_count_change since the last sync, is refused before any write, its blocking check
failed and naming the counts; a Launchpad override lets one run through. Real DuckDB files, the
Stripe double, and Dagster's materialize, so the check results and the blocking are Dagster's own.
"""

from fractions import Fraction

import dagster as dg
import duckdb
import pytest

from census_stripe.objects import PRODUCT
from census_stripe.orchestration.sync_asset import GUARD_CHECKS
from census_stripe.plan.guards import (
    MAX_ARCHIVE_RATE,
    MAX_ROW_COUNT_CHANGE,
    Threshold,
    archive_verdict,
    row_count_verdict,
)
from census_stripe_tests.catalog import catalog_asset, catalog_sync, stripe_for, write_model
from census_stripe_tests.conftest import SyncRunner, resources
from census_stripe_tests.test_meter_event_spec import VALID as METER_EVENTS
from census_stripe_tests.test_spec import problems

ARCHIVING = """
model: products
object: product
behavior: update_or_create
archive_missing: true
key: {field: id, column: id}
mapping: {name: name}
"""
COUNTED = """
model: products
object: product
behavior: update_or_create
max_row_count_change: 0.5
key: {field: id, column: id}
mapping: {name: name}
"""
PRICES = """
model: prices
object: price
behavior: update_or_create
product_sync: products
key: {field: lookup_key, column: lookup_key}
mapping: {product: product, currency: currency, unit_amount: amount}
"""
ARCHIVE_CHECK, ROW_COUNT_CHECK = GUARD_CHECKS[MAX_ARCHIVE_RATE], GUARD_CHECKS[MAX_ROW_COUNT_CHANGE]
PRODUCTS = [{"id": f"plan_{n:02}", "name": f"Plan {n}", "region": "eu" if n % 2 else "us"} for n in range(20)]


class Guarded:
    """A product sync over a DuckDB file of its own, materialized through Dagster against the Stripe double."""

    def __init__(self, tmp_path, double, text: str):
        self.path = tmp_path / "warehouse.duckdb"
        self.double = double
        self.model(PRODUCTS)
        self.runner = SyncRunner(catalog_sync(tmp_path, "products", text), self.path, double.url)

    def model(self, rows: list[dict]) -> None:
        write_model(self.path, "products", rows)

    def run(self, partition_key: str | None = None, **config) -> dg.ExecuteInProcessResult:
        return self.runner.run(raise_on_error=False, partition_key=partition_key, **config)

    def writes(self) -> int:
        """Products created or updated in the double so far (an archive is an update)."""
        stats = self.double.stats()
        return stats.get("done_product_create", 0) + stats.get("done_product_update", 0)

    def products(self) -> dict[str, dict]:
        return {p.id: p.values for p in stripe_for(self.double.url, PRODUCT).iter_all()}

    def active(self) -> int:
        return sum(values["active"] == "true" for values in self.products().values())

    def summary(self, result) -> str:
        """The summary in one line: Dagster's Overview shows it wrapped (`  \n`)."""
        return " ".join(self.runner.metadata(result)["summary"].split("  \n"))


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def refused(result, guard: str) -> str:
    """The run failed on the guard's blocking check and materialized nothing; the check's description."""
    assert not result.success
    assert result.get_asset_materialization_events() == []
    evaluation = checks(result)[GUARD_CHECKS[guard]]
    assert (evaluation.passed, evaluation.severity, evaluation.blocking) == (False, dg.AssetCheckSeverity.ERROR, True)
    assert evaluation.description.endswith(
        f"Nothing was written to Stripe. To let this run through, set {guard} in its run config (Launchpad)."
    )
    return evaluation.description


def passed(result, guard: str) -> str:
    assert result.success
    evaluation = checks(result)[GUARD_CHECKS[guard]]
    assert evaluation.passed
    return evaluation.description


@pytest.fixture
def archiving(tmp_path, double) -> Guarded:
    """Twenty products synced by a sync that archives those that leave its model (default max_archive_rate)."""
    guarded = Guarded(tmp_path, double, ARCHIVING)
    first = guarded.run()
    assert passed(first, MAX_ARCHIVE_RATE) == "would archive 0 of 0 products: within max_archive_rate 10 %"
    assert guarded.runner.counts(first)["created"] == 20
    return guarded


def test_an_emptied_model_archives_nothing_and_its_blocking_check_stops_the_sync_downstream(tmp_path, archiving):
    write_model(archiving.path, "prices", [{"lookup_key": "a", "product": "plan_00", "currency": "usd", "amount": "1"}])
    prices = catalog_asset(tmp_path, "prices", PRICES)
    with duckdb.connect(str(archiving.path)) as connection:
        connection.execute("delete from main.products")
    writes = archiving.writes()

    result = dg.materialize(
        [archiving.runner.asset, prices],
        resources=resources(archiving.path, archiving.double.url),
        raise_on_error=False,
    )
    assert refused(result, MAX_ARCHIVE_RATE).startswith(
        "the model is empty: would archive 20 of 20 products: refused, an empty model archives nothing."
    )
    metadata = checks(result)[ARCHIVE_CHECK].metadata
    assert (metadata["planned_archives"].value, metadata["in_stripe"].value, metadata["rows_read"].value) == (20, 20, 0)
    assert archiving.writes() == writes and archiving.active() == 20
    # The price sync downstream never started: the products' blocking check failed their step.
    started = {event.step_key for event in result.all_events if event.is_step_start}
    assert started == {archiving.runner.asset.op.name}
    assert "Refused by its guards before any write" in archiving.summary(result)


def test_a_truncated_model_above_the_rate_is_refused_whole_creates_and_updates_included(archiving):
    # 3 of 20 leave (15 %), one is renamed, one is new: the run writes none of it.
    kept = [{**row, "name": "Renamed"} if row["id"] == "plan_00" else row for row in PRODUCTS[:17]]
    archiving.model([*kept, {"id": "plan_new", "name": "New", "region": "eu"}])
    writes = archiving.writes()

    result = archiving.run()
    assert refused(result, MAX_ARCHIVE_RATE).startswith(
        "would archive 3 of 20 products: refused, above max_archive_rate 10 %."
    )
    assert archiving.writes() == writes and archiving.active() == 20
    assert archiving.products()["plan_00"]["name"] == "Plan 0" and "plan_new" not in archiving.products()
    summary = archiving.summary(result)
    assert "would archive 3 of 20 products: refused, above max_archive_rate 10 %" in summary
    # The refusal is no success: the next run is judged the same way, against the same twenty.
    assert refused(archiving.run(), MAX_ARCHIVE_RATE).startswith("would archive 3 of 20 products: refused")


def test_archiving_exactly_the_rate_goes_through(archiving):
    archiving.model(PRODUCTS[:18])  # 2 of 20: 10 %, not above it
    result = archiving.run()
    assert passed(result, MAX_ARCHIVE_RATE) == "would archive 2 of 20 products: within max_archive_rate 10 %"
    assert archiving.runner.counts(result)["archived"] == 2
    assert archiving.active() == 18


def test_a_dry_run_previews_the_refusal_as_a_warning_and_writes_nothing(archiving):
    archiving.model(PRODUCTS[:17])
    writes = archiving.writes()
    result = archiving.run(dry_run=True)
    assert result.success  # a dry run writes nothing, so it blocks nothing
    evaluation = checks(result)[ARCHIVE_CHECK]
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert evaluation.description == "dry run: would archive 3 of 20 products: refused, above max_archive_rate 10 %"
    summary = archiving.summary(result)
    assert "A run would be refused by its guards." in summary
    assert "would archive 3 of 20 products: refused, above max_archive_rate 10 %" in summary
    assert archiving.writes() == writes


def test_the_launchpad_override_lets_one_run_through_and_the_next_is_judged_by_the_file(archiving):
    archiving.model(PRODUCTS[:17])
    assert not archiving.run().success

    result = archiving.run(max_archive_rate=0.15)
    assert passed(result, MAX_ARCHIVE_RATE) == (
        "would archive 3 of 20 products: within max_archive_rate 15 % (this run's; the sync file's is 10 %)"
    )
    assert archiving.runner.counts(result)["archived"] == 3 and archiving.active() == 17

    archiving.model(PRODUCTS[:15])  # 2 of the 17 left: 11.8 %, above the file's 10 % again
    assert refused(archiving.run(), MAX_ARCHIVE_RATE).startswith("would archive 2 of 17 products: refused")


def test_an_empty_model_archives_everything_only_with_a_launchpad_override_of_100_percent(tmp_path, double):
    guarded = Guarded(tmp_path, double, ARCHIVING + "max_archive_rate: 1\n")
    assert guarded.run().success
    with duckdb.connect(str(guarded.path)) as connection:
        connection.execute("delete from main.products")
    # The sync file's 100 % allows any share, but never from an empty model: that is a failed load.
    assert refused(guarded.run(), MAX_ARCHIVE_RATE).startswith("the model is empty: would archive 20 of 20")
    assert guarded.active() == 20

    result = guarded.run(max_archive_rate=1.0)
    assert passed(result, MAX_ARCHIVE_RATE).startswith("would archive 20 of 20 products: within max_archive_rate 100 %")
    assert guarded.active() == 0


def test_a_model_that_shrank_or_grew_beyond_max_row_count_change_is_refused(tmp_path, double):
    counted = Guarded(tmp_path, double, COUNTED)
    first = counted.run()
    assert passed(first, MAX_ROW_COUNT_CHANGE) == "20 rows in products: no earlier sync to compare with"

    counted.model([{**PRODUCTS[0], "name": "Renamed"}, *PRODUCTS[1:9]])  # 9 of 20: -55 %
    writes = counted.writes()
    result = counted.run()
    assert refused(result, MAX_ROW_COUNT_CHANGE).startswith(
        "9 rows in products, 20 at the last sync (-55 %): refused, beyond max_row_count_change 50 %."
    )
    metadata = checks(result)[ROW_COUNT_CHECK].metadata
    assert (metadata["rows_read"].value, metadata["last_rows_read"].value) == (9, 20)
    assert counted.writes() == writes and counted.products()["plan_00"]["name"] == "Plan 0"

    # Compared with the last run that synced (20 rows), not with the refused one: -50 % passes.
    counted.model([{**PRODUCTS[0], "name": "Renamed"}, *PRODUCTS[1:10]])
    result = counted.run()
    assert passed(result, MAX_ROW_COUNT_CHANGE) == (
        "10 rows in products, 20 at the last sync (-50 %): within max_row_count_change 50 %"
    )
    assert counted.products()["plan_00"]["name"] == "Renamed"

    counted.model(PRODUCTS[:16])  # 16 against the 10 just synced: +60 %
    assert refused(counted.run(), MAX_ROW_COUNT_CHANGE).startswith("16 rows in products, 10 at the last sync (+60 %)")
    result = counted.run(max_row_count_change=1.0)
    assert passed(result, MAX_ROW_COUNT_CHANGE).endswith("(this run's; the sync file's is 50 %)")
    assert counted.runner.counts(result)["rows_read"] == 16
    assert passed(counted.run(), MAX_ROW_COUNT_CHANGE).startswith("16 rows in products, 16 at the last sync (+0 %)")


def test_a_partitioned_sync_compares_each_partition_with_its_own_last_sync(tmp_path, double):
    counted = Guarded(tmp_path, double, COUNTED + "partitions: {values: {column: region, values: [eu, us]}}\n")
    for region in ("eu", "us"):
        assert passed(counted.run(partition_key=region), MAX_ROW_COUNT_CHANGE).startswith(
            f"10 rows in products (region in {region}): no earlier sync"
        )
    counted.model([row for row in PRODUCTS if row["region"] == "us" or row["id"] < "plan_08"])  # eu: 4 of 10

    assert refused(counted.run(partition_key="eu"), MAX_ROW_COUNT_CHANGE).startswith(
        "4 rows in products (region in eu), 10 at the last sync (-60 %): refused"
    )
    assert passed(counted.run(partition_key="us"), MAX_ROW_COUNT_CHANGE).startswith(
        "10 rows in products (region in us), 10 at the last sync (+0 %): within"
    )


def test_the_row_count_is_reported_unguarded_when_max_row_count_change_is_not_set(archiving):
    archiving.model(PRODUCTS[:18])
    result = archiving.run()
    assert passed(result, MAX_ROW_COUNT_CHANGE) == (
        "18 rows in products, 20 at the last sync (-10 %): max_row_count_change not set"
    )


@pytest.mark.parametrize("rate", ["0.05", "0.1", "0.25", "0.3", "0.5"])
def test_a_share_exactly_at_the_threshold_passes_and_one_more_is_refused_whatever_the_size(rate):
    """The shares are floats: judged exactly as their fractions would be, for every size up to 1,000."""
    archive, row_count = Threshold(MAX_ARCHIVE_RATE, float(rate)), Threshold(MAX_ROW_COUNT_CHANGE, float(rate))
    for size in range(1, 1001):
        at = int(Fraction(rate) * size)  # the most a run may archive, or add, exactly
        assert archive_verdict(at, size, size, "products", archive).passed
        assert row_count_verdict(size + at, size, "m", row_count).passed
        assert row_count_verdict(size - at, size, "m", row_count).passed
        if at < size:
            assert not archive_verdict(at + 1, size, size, "products", archive).passed
            assert not row_count_verdict(size - at - 1, size, "m", row_count).passed
        assert not row_count_verdict(size + at + 1, size, "m", row_count).passed


def test_thresholds_are_checked_where_they_are_written():
    archiving = ARCHIVING.replace("archive_missing: true", "archive_missing: true\nmax_archive_rate: 1.5")
    assert problems(archiving) == [("attributes.max_archive_rate", "Input should be less than or equal to 1")]
    assert problems(COUNTED.replace("0.5", "-0.1")) == [
        ("attributes.max_row_count_change", "Input should be greater than or equal to 0")
    ]
    assert problems(COUNTED + "max_archive_rate: 0.2\n") == [
        ("attributes.max_archive_rate", "only a sync with archive_missing: true archives")
    ]


def test_a_meter_event_sync_has_no_row_count_guard():
    [(field, problem)] = problems(METER_EVENTS + "max_row_count_change: 0.5\n")
    assert field == "attributes.max_row_count_change" and problem.startswith("a usage model grows by design")
