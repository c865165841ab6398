# ruff: noqa: RUF001 (the subject here is letters that look alike)
"""Upgrading to the explicit key rule, on every warehouse: state filed by versions that lower-cased
emails with the database's LOWER keeps its customers. The first run after the upgrade finds each
state row under its former key, files it again under today's key, and creates nothing; the rerun
after it looks nothing up. A former key that today's rule gives to another model row stays with
that row, and a former key two model rows claim goes to neither.

The versions before are played by the sync with `plan.sql.key_sql` replaced by the rule they had
(`keys.legacy_key_sql`), on the same database."""

import uuid

import pandas as pd
import pytest
from sqlglot import exp

from census_stripe.plan import keys, sql
from census_stripe.plan.rows import Candidate, PriorState, settle_former_keys
from census_stripe.spec import parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.sync import RunOptions, SyncReport, run_sync
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import API_KEY
from census_stripe_tests.key_warehouses import create_table

SPEC = """
model: people
behavior: {behavior}
key: {{field: email, column: email}}
mapping: {{name: name}}
"""
# Emails whose key the LOWER of some database made differently from today's rule.
EMAILS = [
    "ÉLODIE@Exemple.FR",
    "\u00a0İSTANBUL@Example.TR ",
    "ΣΑΣ@Example.GR",
    "ОЛЯ@Пример.РФ",
    "ＩＲＩＳ@Example.JP",
    "INFO@IBM.COM",
    "ada@example.com",
]


class Sync:
    """One sync of a model in a warehouse, to the Stripe double, run as a version would run it."""

    def __init__(self, warehouse: Warehouse, double, behavior: str = "update_or_create"):
        self.warehouse = warehouse
        self.double = double
        self.spec = parse_sync_spec(SPEC.format(behavior=behavior), "people.yaml")
        self.store = SyncStateStore(warehouse, schema=f"state_{uuid.uuid4().hex[:8]}")
        self.model_name = f"people_{uuid.uuid4().hex[:8]}"
        self.model: Relation | None = None
        self.runs = 0

    def model_holds(self, *emails: str) -> None:
        if self.model is not None:
            self.warehouse.execute(f"DROP TABLE {self.model.schema}.{self.model.name}")
        rows = pd.DataFrame({"email": list(emails), "name": [f"Customer {i}" for i in range(len(emails))]})
        self.model = create_table(self.warehouse, "upgrade", self.model_name, rows)

    def run(self, **options) -> SyncReport:
        assert self.model is not None
        self.runs += 1
        stripe = StripeObjects(API_KEY, self.double.url)
        run_id = f"run-{self.runs}"
        return run_sync(self.spec, model=self.model, store=self.store, stripe=stripe, run_id=run_id, **options)

    def run_as_before(self, monkeypatch) -> SyncReport:
        """A run of a version before the explicit rule."""
        with monkeypatch.context() as before:
            before.setattr(sql, "key_sql", lambda field, value, dialect=None: keys.legacy_key_sql(field, value))
            return self.run()

    def state(self) -> dict[str, str | None]:
        """Key -> Stripe customer id, for every state row of the sync."""
        table = self.store.state.table().sql(self.warehouse.dialect)
        rows = self.warehouse.query(f'SELECT "customer_key", "stripe_customer_id" FROM {table}')
        assert len(rows) == len(set(rows.iloc[:, 0])), "two state rows for one key"
        return dict(zip(rows.iloc[:, 0], rows.iloc[:, 1], strict=True))

    def customers(self) -> dict[str, str]:
        """Email -> id of every customer in Stripe."""
        return {c.values["email"]: c.id for c in StripeObjects(API_KEY, self.double.url).iter_all()}

    def legacy_keys(self) -> dict[str, str]:
        """Each model email's key under the rule before, as this database computes it."""
        assert self.model is not None
        column = exp.cast(exp.column(self.warehouse.model_identifier("email"), quoted=True), "text")
        legacy = keys.legacy_key_sql("email", column).sql(self.warehouse.dialect)
        table = self.model.table().sql(self.warehouse.dialect)
        rows = self.warehouse.query(f"SELECT {column.sql(self.warehouse.dialect)}, {legacy} FROM {table}")
        return dict(zip(rows.iloc[:, 0], rows.iloc[:, 1], strict=True))


@pytest.fixture
def upgrade(key_warehouse, double):
    return lambda behavior="update_or_create": Sync(key_warehouse, double, behavior)


def test_state_filed_under_the_former_key_keeps_its_customer(upgrade, monkeypatch):
    sync = upgrade()
    sync.model_holds(*EMAILS)
    assert sync.run_as_before(monkeypatch).counts()["created"] == len(EMAILS)
    created = sync.customers()
    legacy = sync.legacy_keys()
    assert set(sync.state()) == set(legacy.values())

    # A dry run plans with the state found under the former keys and leaves it where it is.
    preview = sync.run(options=RunOptions(dry_run=True)).counts()
    assert (preview["planned_creates"], preview["planned_updates"]) == (0, 0)
    assert set(sync.state()) == set(legacy.values())

    upgraded = sync.run()
    counts = upgraded.counts()
    assert (counts["created"], counts["updated"], counts["unchanged"]) == (0, 0, len(EMAILS))
    assert sync.customers() == created
    today = {email: keys.normalize_key("email", email) for email in EMAILS}
    assert sync.state() == {today[email]: created[keys.trim(email)] for email in EMAILS}
    assert counts["stripe_api_calls"] == 0  # nothing was looked up

    rerun = sync.run()
    assert (len(rerun.plan.rows), rerun.counts()["stripe_api_calls"]) == (0, 0)


def test_a_customer_adopted_under_the_former_key_is_not_created_again(upgrade, monkeypatch, double):
    """Create Only adopts a customer whose email is spelled otherwise in Stripe and never updates
    it: after the upgrade, only the state row still ties the two together."""
    double.load(
        [{"email": "élodie@exemple.fr", "name": "Customer 0"}, {"email": "σασ@example.gr", "name": "Customer 1"}]
    )
    sync = upgrade("create_only")
    sync.model_holds("ÉLODIE@Exemple.FR", "ΣΑΣ@Example.GR")
    sync.run_as_before(monkeypatch)
    before = sync.customers()
    state_before = sorted(sync.state().values())

    upgraded = sync.run()
    assert upgraded.counts()["created"] == 0
    assert sync.customers() == before
    assert sorted(sync.state().values()) == state_before
    assert set(sync.state()) == {"Élodie@exemple.fr", "ΣΑΣ@example.gr"}


def test_a_former_key_that_another_row_has_today_stays_with_that_row(upgrade, monkeypatch):
    sync = upgrade()
    sync.model_holds("élodie@exemple.fr")
    sync.run_as_before(monkeypatch)
    [first] = sync.customers().values()

    # A new row whose former key is the first row's key: under today's rule it is another key.
    sync.model_holds("élodie@exemple.fr", "ÉLODIE@Exemple.FR")
    report = sync.run()
    assert report.counts()["created"] == 1
    customers = sync.customers()
    assert customers["élodie@exemple.fr"] == first
    assert sync.state() == {"élodie@exemple.fr": first, "Élodie@exemple.fr": customers["ÉLODIE@Exemple.FR"]}


def candidate(key: str, former_key: str | None, stripe_id: str = "cus_former") -> Candidate:
    prior = PriorState(stripe_id, "hash", {"email": key}, None) if former_key else None
    return Candidate(key, key, {"email": key}, "hash", 1, prior, former_key=former_key)


def test_a_former_key_goes_to_its_one_claimant_only():
    held_by_model = {"taken@x.com"}
    asked = []

    def model_has(keys: list[str]) -> set[str]:
        asked.append(sorted(keys))
        return held_by_model & set(keys)

    settled = list(
        settle_former_keys(
            [
                candidate("new@x.com", None),
                candidate("Élan@x.com", "élan@x.com"),  # the only claimant
                candidate("Ab@x.com", "ab@x.com"),  # two rows claim ab@x.com
                candidate("AB@x.com", "ab@x.com"),
                candidate("Taken@x.com", "taken@x.com"),  # a model row has taken@x.com today
                candidate("Twice@x.com", "twice@x.com", "cus_1"),  # one row, two state rows (damaged)
                candidate("Twice@x.com", "twice@x.com", "cus_2"),
            ],
            model_has,
        )
    )
    by_key = {c.key: c for c in settled}
    assert len(settled) == len(by_key) == 6
    assert by_key["new@x.com"].prior is None
    assert (by_key["Élan@x.com"].former_key, by_key["Élan@x.com"].prior.stripe_id) == ("élan@x.com", "cus_former")
    for key in ("Ab@x.com", "AB@x.com", "Taken@x.com", "Twice@x.com"):
        assert (by_key[key].former_key, by_key[key].prior) == (None, None), key
    assert by_key["Twice@x.com"].state_problem == "2 state rows for its former key 'twice@x.com'"
    assert asked == [["taken@x.com", "élan@x.com"]]  # only the keys one row claims are checked
