"""The run's metadata, built from plans and outcomes without Dagster's UI: the summary a person
reads first, the preview (one row per customer), the problems and the links."""

import re
from datetime import datetime
from functools import partial

import pytest

from census_stripe.apply.writer import Outcome
from census_stripe.objects import CUSTOMER, PRICE
from census_stripe.orchestration.metadata import (
    LIST_WIDTH,
    NO_KEY,
    PREVIEW_ROWS,
    SUMMARY_WIDTH,
    _Privacy,
    created_text,
    report_metadata,
)
from census_stripe.orchestration.sync_asset import sync_description
from census_stripe.plan.lookup import LookupResult
from census_stripe.plan.planner import Action, FieldChange, build_plan
from census_stripe.plan.rows import Candidate, PriorState
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import parse_sync_spec
from census_stripe.stripe_client.values import StripeAccount, StripeObject, dashboard_url
from census_stripe.sync import RunOptions, SyncReport

SPEC_TEXT = """
model: stripe_customers
behavior: {behavior}
key: {{field: email, column: email}}
mapping:
  name: full_name
  metadata.plan: plan
constants:
  metadata.synced_by: census_stripe
mask_personal_data: {mask}
"""
QUERY = "SELECT * FROM census_stripe.sync_changes WHERE run_id = 'r1'"
LOCAL = partial(dashboard_url, api_key="sk_test_x", api_base="http://127.0.0.1:8420")
STRIPE = partial(dashboard_url, api_key="sk_test_x", api_base=None)


def spec(behavior="update_or_create", mask=False):
    return parse_sync_spec(SPEC_TEXT.format(behavior=behavior, mask=str(mask).lower()), "customers.yaml")


def candidate(email, name="Ada", plan="pro", stripe_id=None, synced_plan=None):
    values = {"email": email, "name": name, "metadata.plan": plan, "metadata.synced_by": "census_stripe"}
    prior = None
    if stripe_id:
        prior = PriorState(stripe_id, "old", values | {"metadata.plan": synced_plan or plan}, None)
    key = email.strip().lower() if email else None
    return Candidate(key, email, values, row_hash=f"h-{email}-{plan}", key_rows=1, prior=prior)


NORMAL_RUN = RunOptions()


def report(candidates, *, behavior="update_or_create", rows_read=None, written=True, options=NORMAL_RUN, **kw):
    """A report on `candidates` as the sync would make it; every planned write succeeds when `written`."""
    sync = spec(behavior, kw.pop("mask", False))
    found = kw.pop("found", {})
    plan = build_plan(
        sync,
        candidates,
        rows_read or len(candidates),
        lambda keys: LookupResult({key: [StripeObject(found[key], {})] for key in keys if key in found}, "per_key"),
        repush=options.repush,
    )
    outcomes = []
    if written and not options.dry_run:
        for number, row in enumerate(plan.writes):
            status = "created" if row.action is Action.CREATE else "updated"
            outcomes.append(Outcome(row, status, row.stripe_id or f"cus_new{number}"))
    return SyncReport(sync, options, plan, outcomes=outcomes, changes_query=QUERY, **kw)


def records(value) -> list[dict]:
    return [record.data for record in value.records]


def summary_lines(summary: str) -> list[str]:
    """What the Overview tab shows, line by line: markdown markers and line breaks removed."""
    return [re.sub(r"^- |\*\*|  $", "", line) for line in summary.splitlines() if line.strip()]


def test_the_preview_has_one_row_per_customer_with_only_the_fields_that_change():
    rows = [
        candidate("grace@example.com", plan="pro", stripe_id="cus_g", synced_plan="free"),
        candidate("ada@example.com", name="Ada"),
        candidate("same@example.com", stripe_id="cus_s"),
        candidate("not-an-email"),
    ]
    metadata = report_metadata(report(rows), LOCAL)
    assert records(metadata["preview"]) == [
        {
            "key": "grace@example.com",
            "changes": "update — metadata.plan: free → pro",
            "stripe_customer_id": "cus_g",
        },
        {
            # The key is the first column; a new customer's changes do not repeat it, and show its
            # first fields, then how many more.
            "key": "ada@example.com",
            "changes": "create — name: Ada; metadata.plan: pro; +1 more",
            "stripe_customer_id": "cus_new0",
        },
    ]


def test_the_key_field_is_a_change_only_when_its_spelling_changes():
    stored = candidate("Ada@Example.com", stripe_id="cus_a")
    respelled = candidate("ada@example.com")
    respelled = Candidate(respelled.key, respelled.key_value, respelled.values, "h2", 1, stored.prior)
    [row] = records(report_metadata(report([respelled]), LOCAL)["preview"])
    assert row["changes"] == "update — email: Ada@Example.com → ada@example.com"


def test_writes_come_first_and_skips_after_them_with_their_reason():
    rows = [candidate("gone@example.com"), candidate("kept@example.com")]
    metadata = report_metadata(report(rows, behavior="update_only", found={"kept@example.com": "cus_k"}), LOCAL)
    preview = records(metadata["preview"])
    assert [(row["key"], row["changes"].split(" — ")[0]) for row in preview] == [
        ("kept@example.com", "update"),
        ("gone@example.com", "skip"),
    ]
    assert preview[1]["changes"] == "skip — no Stripe customer has this email (Update Only never creates)"


def test_a_partition_run_writes_every_row_again_but_the_preview_lists_only_real_changes():
    partition = RunOptions(model_slice=ModelSlice("region", values=("EU",)))
    same = candidate("same@example.com", stripe_id="cus_s")
    changed = candidate("new-plan@example.com", stripe_id="cus_n", synced_plan="free")
    metadata = report_metadata(report([same, changed], options=partition), LOCAL)
    assert records(metadata["preview"]) == [
        {
            "key": "new-plan@example.com",
            "changes": "update — metadata.plan: free → pro",
            "stripe_customer_id": "cus_n",
        },
        {
            "key": "same@example.com",
            "changes": "update — no change; written again, as a partition run writes all its rows",
            "stripe_customer_id": "cus_s",
        },
    ]
    assert metadata["updated"].value == 2
    assert "partition: region in EU, every row written again" in " ".join(summary_lines(metadata["summary"].value))


def test_the_preview_says_how_much_it_shows_and_where_every_row_is():
    many = [candidate(f"user{n}@example.com") for n in range(PREVIEW_ROWS + 10)]
    metadata = report_metadata(report(many, options=RunOptions(dry_run=True)), LOCAL)
    assert len(metadata["preview"].records) == PREVIEW_ROWS
    shown = " ".join(summary_lines(metadata["summary"].value))
    assert (
        f"preview: showing {PREVIEW_ROWS} of {PREVIEW_ROWS + 10}; all {PREVIEW_ROWS + 10}: the SQL in sql_for_every_row"
        in (shown)
    )
    assert metadata["sql_for_every_row"].value == QUERY
    assert "whole_plan" not in str(metadata)


def test_a_run_with_nothing_to_change_says_so_in_words():
    metadata = report_metadata(report([candidate("not-an-email")], rows_read=295), LOCAL)
    assert metadata["preview"].value == "nothing to change: 294 customers  \nunchanged"
    assert summary_lines(metadata["summary"].value)[:2] == ["Nothing to change: 294 customers", "unchanged."]
    assert "sql_for_every_row" not in metadata
    assert metadata["stripe_customers"].value == "No customer was written in this run."


@pytest.mark.parametrize(
    "options, account, facts",
    [
        (NORMAL_RUN, None, ["Created 1 and updated 1 Stripe customers.", "not a dry run", "since last sync"]),
        (
            RunOptions(dry_run=True),
            StripeAccount("acct_1Nv0FGQ9RKHgCVdK", livemode=False),
            ["Dry run: would create 1 and update 1", "dry run: nothing written", "Stripe acct_1Nv0FGQ9RKHgCVdK"],
        ),
        (
            RunOptions(full_resync=True),
            StripeAccount("acct_live", livemode=True),
            ["Stripe acct_live (live mode)", "full resync: every row compared", "1 created, 1 updated", "0 failed"],
        ),
        (
            RunOptions(model_slice=ModelSlice("signup", start=datetime(2024, 3, 1), end=datetime(2024, 4, 1))),
            None,
            ["partition: signup from 2024-03-01 to 2024-04-01, every row written again"],
        ),
    ],
)
def test_the_summary_says_what_the_run_did_in_lines_the_overview_tab_shows_whole(options, account, facts):
    rows = [candidate("new@example.com"), candidate("old@example.com", stripe_id="cus_o", synced_plan="free")]
    summary = report_metadata(report(rows, options=options, account=account), LOCAL)["summary"].value
    shown = " ".join(summary_lines(summary))
    assert all(fact in shown for fact in facts), shown
    headline, _, items = summary.partition("\n\n")
    assert all(len(line) <= SUMMARY_WIDTH for line in summary_lines(headline))
    assert all(len(line) <= LIST_WIDTH for line in summary_lines(items))
    assert ("acct_" in summary) == (account is not None)


def test_rejected_rows_lead_with_key_and_reason_and_are_counted_by_kind():
    rows = [candidate("not-an-email"), candidate("jane.doe@"), candidate("ok@example.com", name="x" * 300)]
    metadata = report_metadata(report(rows), LOCAL)
    rejected = metadata["rejected_rows"]
    assert [column.name for column in rejected.schema.columns] == ["key", "reason"]  # no empty Stripe id column
    assert records(rejected)[0] == {"key": "not-an-email", "reason": "invalid email: 'not-an-email'"}
    assert records(metadata["rejection_reasons"]) == [
        {"reason": "invalid email", "rows": "2"},
        {"reason": "value too long", "rows": "1"},
    ]
    assert "failed_rows" not in metadata and "failure_reasons" not in metadata


def test_failed_rows_quote_stripes_message_verbatim():
    stripe_says = "InvalidRequestError (HTTP 400): Invalid phone number: '+1 nope'"
    sync_report = report([candidate("ada@example.com", stripe_id="cus_a", synced_plan="free")], written=False)
    sync_report.outcomes = [Outcome(sync_report.plan.writes[0], "failed", "cus_a", stripe_says)]
    metadata = report_metadata(sync_report, LOCAL)
    assert records(metadata["failed_rows"]) == [
        {"key": "ada@example.com", "reason": stripe_says, "stripe_customer_id": "cus_a"}
    ]
    assert records(metadata["failure_reasons"]) == [{"reason": stripe_says, "rows": "1"}]
    assert summary_lines(metadata["summary"].value)[0] == "1 write failed."


def test_links_open_stripes_dashboard_and_a_local_server_gets_plain_ids():
    sync_report = report([candidate("ada@example.com")])
    assert report_metadata(sync_report, STRIPE)["stripe_customers"].value == (
        "- [cus_new0](https://dashboard.stripe.com/test/customers/cus_new0)"
    )
    local = report_metadata(sync_report, LOCAL)["stripe_customers"].value
    assert local == "A local Stripe server, without a dashboard to link to: cus_new0"


def test_the_counts_keep_their_names_for_the_plots():
    metadata = report_metadata(report([candidate("ada@example.com")]), LOCAL)
    counts = [name for name, value in metadata.items() if type(value.value) is int]
    assert counts == [
        "rows_read",
        "planned_creates",
        "planned_updates",
        "unchanged",
        "rejected",
        "skipped_not_found",
        "created",
        "recreated",
        "updated",
        "failed",
        "stripe_api_calls",
        "stripe_lookup_calls",
        "stripe_duplicate_keys",
        "stripe_rate_limited",
        "state_rows_repaired",
    ]
    assert next(iter(metadata)) == "summary"  # the Overview tab lists metadata in this order


def test_masking_covers_the_preview_changes_and_the_reasons():
    rows = [candidate("ada@example.com", name="Ada Lovelace"), candidate("gone@example.com", name="Grace")]
    masked = report(rows, behavior="update_only", mask=True, found={"ada@example.com": "cus_a"})
    preview = records(report_metadata(masked, LOCAL)["preview"])
    assert preview[0]["key"] == "a***@example.com"
    assert "name: (empty) → A***" in preview[0]["changes"] and "Lovelace" not in str(preview)
    assert preview[1] == {
        "key": "g***@example.com",
        "changes": "skip — no Stripe customer has this email (Update Only never creates)",
        "stripe_customer_id": None,
    }


def test_the_asset_description_shows_the_syncs_contract():
    description = sync_description(spec(), "stripe_customers")
    assert "Reads the dbt model `stripe_customers`, matches each row to a Stripe customer by `email`" in description
    assert "creates the others (`update_or_create`)" in description
    assert "| `email` (the key) | `email` |" in description
    assert "| `name` | `full_name` |" in description
    assert "| `metadata.synced_by` | `'census_stripe'`, a constant |" in description


def test_a_created_customer_is_one_line_its_first_fields_then_how_many_more():
    fields = ["name", "phone", *(f"address.{part}" for part in ("line1", "city", "postal_code", "country"))]
    changes = [FieldChange(f"metadata.{n}", None, "x" * 40) for n in ("plan", "signup_date")]
    changes += [FieldChange(field, None, f"{field} of Ada Lovelace, a long value") for field in reversed(fields)]
    privacy = _Privacy(report([candidate("ada@example.com")]))
    text = created_text(changes, privacy, CUSTOMER)
    assert text == "create — name: name of Ada Lovel…; phone: phone of Ada Lov…; +6 more"
    assert len(text) < 80  # with the key and the Stripe id, one line of the Events tab at 1280 px


def test_a_created_price_says_its_amount_in_the_currencys_units_first():
    values = {"product": "prod_pro", "currency": "jpy", "unit_amount": "5000", "recurring.interval": "month"}
    changes = [FieldChange(field, None, value) for field, value in values.items()]
    privacy = _Privacy(report([candidate("ada@example.com")]))
    assert created_text(changes, privacy, PRICE) == "create — 5000 JPY/month; product: prod_pro"
    usd = [FieldChange("currency", None, "usd") if c.field == "currency" else c for c in changes]
    assert created_text(usd, privacy, PRICE) == "create — 50.00 USD/month; product: prod_pro"


def test_a_row_without_a_key_is_named_in_words():
    metadata = report_metadata(report([candidate(None), candidate("ok@example.com")]), LOCAL)
    assert [record["key"] for record in records(metadata["rejected_rows"])] == [NO_KEY]
    assert "None" not in str(records(metadata["rejected_rows"]))
