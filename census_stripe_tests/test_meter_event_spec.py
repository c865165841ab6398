"""A meter event sync's settings: what loads, and what is refused before anything runs, naming the
file and the field."""

from pathlib import Path

import pytest

from census_stripe.component import customer_source
from census_stripe.settings import DEFS_DIR
from census_stripe.spec import MeterEventSpec, SyncConfigError, check_model_columns, parse_sync_spec
from census_stripe_tests.test_spec import problems

VALID = """
model: usage
object: meter_event
meter_event:
  event_name: api_calls
  customer: {column: email, sync: customers}
  value_column: calls
  timestamp_column: day
  identity: [email, day]
"""


def test_a_meter_event_sync_loads_without_key_or_behavior():
    spec = parse_sync_spec(VALID, "defs/usage/defs.yaml")
    assert isinstance(spec, MeterEventSpec)
    assert (spec.meter_event.api, spec.meter_event.customer_payload_key) == ("stream", "stripe_customer_id")


def test_what_only_object_syncs_take_is_refused_all_at_once():
    found = dict(
        problems(
            VALID
            + "behavior: update_or_create\nkey: {field: email, column: email}\nmapping: {name: full_name}\n"
            + "archive_missing: true\n"
        )
    )
    assert set(found) == {
        "attributes.behavior",
        "attributes.key",
        "attributes.mapping",
        "attributes.archive_missing",
    }
    assert "meter_event.identity" in found["attributes.key"]


def test_the_event_name_is_a_constant_or_a_column_not_both_nor_neither():
    both = VALID.replace("event_name: api_calls", "event_name: api_calls\n  event_name_column: name")
    assert problems(both) == [("attributes.meter_event", "give exactly one of event_name or event_name_column")]
    neither = VALID.replace("  event_name: api_calls\n", "")
    assert problems(neither) == [("attributes.meter_event", "give exactly one of event_name or event_name_column")]


def test_a_missing_meter_event_block_and_an_empty_identity_are_named():
    assert dict(problems("model: usage\nobject: meter_event\n")) == {"attributes.meter_event": "Field required"}
    found = problems(VALID.replace("identity: [email, day]", "identity: []"))
    assert found[0][0] == "attributes.meter_event.identity"


def test_an_object_sync_still_needs_its_key_and_behavior():
    found = dict(problems("model: stripe_customers\nmapping: {name: full_name}\n"))
    assert found == {"attributes.behavior": "Field required", "attributes.key": "Field required"}


def test_every_column_the_sync_reads_must_be_in_the_model():
    spec = parse_sync_spec(VALID, "defs/usage/defs.yaml")
    with pytest.raises(SyncConfigError) as raised:
        check_model_columns(spec, ["email", "day"], "defs/usage/defs.yaml")
    assert [field for field, _ in raised.value.problems] == ["attributes.meter_event.value_column"]


def test_the_customer_sync_must_be_a_customer_sync_beside_it(tmp_path):
    for name, text in {
        "customers": (DEFS_DIR / "customers" / "defs.yaml").read_text(),
        "products": (DEFS_DIR / "products" / "defs.yaml").read_text(),
        "usage": VALID,
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "defs.yaml").write_text(text)
    spec = parse_sync_spec(VALID, tmp_path / "usage" / "defs.yaml")
    source = customer_source(spec, tmp_path / "usage")
    assert (source.sync_name, source.key_field, source.stripe_resource) == ("customers", "email", "stripe")
    wrong = parse_sync_spec(VALID.replace("sync: customers", "sync: products"), Path("x"))
    with pytest.raises(SyncConfigError) as raised:
        customer_source(wrong, tmp_path / "usage")
    [(field, problem)] = raised.value.problems
    assert field == "attributes.meter_event.customer.sync" and "no customer sync named 'products'" in problem
