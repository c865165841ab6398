"""A sync's settings (a StripeSyncComponent instance's defs.yaml): what loads, and the message a person
reads when it does not."""

import textwrap
from pathlib import Path

import pytest

from census_stripe.settings import DEFS_DIR
from census_stripe.spec import SyncConfigError, check_model_columns, load_sync_spec, parse_sync_spec

VALID = """
model: stripe_customers
behavior: update_or_create
key: {field: email, column: email}
mapping:
  name: full_name
  address.city: city
  metadata.plan: plan
constants:
  metadata.source: warehouse
  tax_exempt: none
"""


def problems(text: str, path: str = "defs/bad/defs.yaml") -> list[tuple[str, str]]:
    with pytest.raises(SyncConfigError) as raised:
        parse_sync_spec(text, path)
    assert all(line.startswith(f"{path}: ") for line in str(raised.value).splitlines())
    return raised.value.problems


def test_a_valid_instance_loads_with_its_name_from_its_folder():
    document = "type: census_stripe.StripeSyncComponent\nattributes:\n" + textwrap.indent(VALID.strip(), "  ")
    spec = parse_sync_spec(document, "defs/billing_contacts/defs.yaml")
    assert spec.name == "billing_contacts"
    assert spec.columns_by_field == {
        "email": "email",
        "name": "full_name",
        "address.city": "city",
        "metadata.plan": "plan",
    }
    assert spec.constant_values == {"metadata.source": "warehouse", "tax_exempt": "none"}
    assert spec.columns == ["email", "full_name", "city", "plan"]


def test_a_setting_outdented_beside_attributes_is_refused():
    document = "type: census_stripe.StripeSyncComponent\nattributes:\n" + textwrap.indent(VALID.strip(), "  ")
    found = problems(document + "\nmax_failure_rate: 1.0\n")
    assert found == [("max_failure_rate", "not a component file key: indent it under attributes")]


def test_the_shipped_syncs_load():
    objects = {path.parent.name: load_sync_spec(path).object for path in DEFS_DIR.glob("*/defs.yaml")}
    assert objects == {
        "customers": "customer",
        "customer_regions": "customer",
        "products": "product",
        "prices": "price",
        "api_usage": "meter_event",
    }


def test_unknown_stripe_field_names_file_field_and_known_fields():
    found = problems(VALID.replace("name: full_name", "nmae: full_name"))
    assert found[0][0] == "attributes.mapping.nmae"
    assert "unknown Stripe customer field 'nmae'" in found[0][1]
    assert "address.city" in found[0][1]


def test_mapping_key_must_be_email_or_metadata():
    found = problems(VALID.replace("field: email", "field: phone"))
    assert found == [("attributes.key.field", "the mapping key is `email` or `metadata.<name>`, got 'phone'")]


def test_metadata_key_is_a_valid_external_id_key():
    spec = parse_sync_spec(VALID.replace("field: email", "field: metadata.user_id"), "s.yaml")
    assert spec.key.field == "metadata.user_id"


def test_behavior_is_one_of_the_two():
    found = problems(VALID.replace("update_or_create", "upsert"))
    assert found[0][0] == "attributes.behavior"
    assert "update_or_create" in found[0][1] and "update_only" in found[0][1]


def test_misspelled_setting_is_refused_not_ignored():
    found = problems(VALID + "behaviour: update_only\n")
    assert found[0][0] == "attributes.behaviour"


def test_metadata_key_limits():
    found = problems(VALID.replace("metadata.plan", "metadata." + "k" * 41))
    assert found[0][0] == "attributes.mapping.metadata." + "k" * 41
    assert "40 characters" in found[0][1]
    found = problems(VALID.replace("metadata.plan", "metadata.a[b]"))
    assert "square brackets" in found[0][1]


def test_constants_are_checked_against_stripe_limits():
    found = problems(VALID.replace("tax_exempt: none", "tax_exempt: sometimes"))
    assert found == [
        ("attributes.constants.tax_exempt", "tax_exempt must be one of none, exempt, reverse, got 'sometimes'")
    ]
    found = problems(VALID.replace("metadata.source: warehouse", "metadata.source: " + "x" * 501))
    assert found[0][0] == "attributes.constants.metadata.source"
    assert "value too long" in found[0][1]


def test_key_field_is_not_mapped_twice():
    found = problems(VALID.replace("name: full_name", "email: other_email"))
    assert found[0][0] == "attributes.mapping.email"


def test_every_problem_is_reported_at_once():
    found = problems(VALID.replace("name: full_name", "nmae: full_name").replace("tax_exempt: none", "tax_exempt: x"))
    assert [field for field, _ in found] == ["attributes.mapping.nmae", "attributes.constants.tax_exempt"]


def test_not_yaml_and_not_a_mapping():
    assert problems("key: [unclosed")[0][0] == "(file)"
    assert problems("- a list")[0] == ("(file)", "expected a mapping of settings at the top level")


def test_missing_required_settings_are_named():
    fields = [field for field, _ in problems("model: m\n")]
    assert fields == ["attributes.behavior", "attributes.key"]


def test_columns_are_checked_against_the_model():
    spec = parse_sync_spec(VALID, "s.yaml")
    check_model_columns(spec, ["email", "full_name", "city", "plan", "other"], "s.yaml")
    with pytest.raises(SyncConfigError) as raised:
        check_model_columns(spec, ["email", "full_name", "plan"], Path("defs/s/defs.yaml"))
    assert str(raised.value).startswith(
        "defs/s/defs.yaml: attributes.mapping.address.city: column 'city' is not in model 'stripe_customers'"
    )
    with pytest.raises(SyncConfigError, match=r"it declares no columns: list them in its dbt \.yml"):
        check_model_columns(spec, [], "s.yaml")


def test_partitions_need_exactly_one_kind_and_no_whole_model_triggers():
    time = "  time: {column: d, granularity: daily, start: '2024-01-01'}\n"
    both = VALID + "partitions:\n" + time + "  values: {column: r, values: [a]}\n"
    assert problems(both)[0] == ("attributes.partitions", "Value error, give exactly one of `time` or `values`")
    watched = VALID + "partitions:\n  values: {column: region, values: [EU]}\nautomation:\n  cron: '0 * * * *'\n"
    assert problems(watched)[0][0] == "attributes.automation"
    assert problems(VALID + "partitions:\n  time: {column: d, granularity: hourly, start: '2024-01-01'}\n")[0][0] == (
        "attributes.partitions.time.granularity"
    )


def test_partition_and_watch_columns_are_checked_against_the_model():
    text = VALID + "partitions:\n  values: {column: regoin, values: [EU]}\n"
    with pytest.raises(SyncConfigError) as raised:
        check_model_columns(parse_sync_spec(text, "s.yaml"), ["email", "full_name", "city", "plan", "region"], "s.yaml")
    assert raised.value.problems[0][0] == "attributes.partitions.values.column"
    text = VALID + "automation:\n  watch: {updated_at_column: changed}\n"
    with pytest.raises(SyncConfigError) as raised:
        check_model_columns(parse_sync_spec(text, "s.yaml"), ["email", "full_name", "city", "plan"], "s.yaml")
    assert raised.value.problems[0][0] == "attributes.automation.watch.updated_at_column"
