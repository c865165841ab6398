"""The catalog's settings and the object types behind them, without Stripe: what a product or price
sync may say, the message a person reads when it says something else, and how flat values become
Stripe's typed parameters and back."""

import textwrap
from pathlib import Path

import pytest

from census_stripe.component import check_product_sync
from census_stripe.objects import PRICE, PRODUCT
from census_stripe.orchestration.sync_asset import sync_description
from census_stripe.spec import SyncConfigError, load_sync_spec, parse_sync_spec

PRICES = """
model: prices
object: price
behavior: update_or_create
product_sync: products
key: {field: lookup_key, column: lookup_key}
mapping:
  product: product
  currency: currency
  unit_amount: amount
  recurring.interval: interval
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SyncConfigError) as raised:
        parse_sync_spec(text, "defs/catalog/defs.yaml")
    assert all(line.startswith("defs/catalog/defs.yaml: attributes.") for line in str(raised.value).splitlines())
    return raised.value.problems


def test_a_price_sync_loads_with_its_product_sync():
    spec = parse_sync_spec(PRICES, "defs/prices/defs.yaml")
    assert (spec.object_type, spec.product_sync, spec.key.field) == (PRICE, "products", "lookup_key")


def test_a_misspelled_price_field_is_named_with_the_known_ones():
    [(where, message)] = problems(PRICES.replace("unit_amount: amount", "unit_amout: amount\n  unit_amount: amount"))
    assert where == "attributes.mapping.unit_amout"
    assert message.startswith("unknown Stripe price field 'unit_amout'; known fields: lookup_key, product, currency")


def test_customers_are_never_archived():
    text = "model: m\nbehavior: update_or_create\narchive_missing: true\nkey: {field: email, column: email}\n"
    assert problems(text) == [("attributes.archive_missing", "customers are never deleted or archived by a sync")]


def test_archiving_needs_the_whole_model():
    text = PRICES + "archive_missing: true\npartitions: {values: {column: currency, values: [usd]}}\n"
    assert problems(text) == [
        ("attributes.archive_missing", "a partition holds part of the model: only a whole-model sync can archive")
    ]


def test_each_object_has_its_own_keys():
    product_by_email = "model: m\nobject: product\nbehavior: update_only\nkey: {field: email, column: e}\n"
    assert problems(product_by_email)[0] == (
        "attributes.key.field",
        "the mapping key is `id` or `metadata.<name>`, got 'email'",
    )
    price_by_metadata = PRICES.replace("field: lookup_key", "field: metadata.sku")
    assert ("attributes.key.field", "the mapping key is `lookup_key`, got 'metadata.sku'") in problems(
        price_by_metadata
    )


def test_a_price_sync_names_its_product_sync_and_maps_what_stripe_needs():
    found = problems(PRICES.replace("product_sync: products\n", "").replace("  unit_amount: amount\n", ""))
    assert found == [
        ("attributes.mapping", "Stripe needs `unit_amount` or `unit_amount_decimal` to create a price: map one"),
        ("attributes.product_sync", "`product` holds keys of a product sync: name that sync here"),
    ]


def test_constants_are_checked_against_the_fields_kinds():
    found = problems(PRICES + "constants: {currency: dollars, active: 'yes'}\n")
    assert ("attributes.constants.currency", "this field is already mapped from a column") in found
    assert (
        "attributes.constants.active",
        "active must be true or false, got 'yes'",
    ) in found


def test_a_price_becomes_typed_parameters_with_numbers_and_booleans():
    values = {
        "lookup_key": "pro_monthly",
        "product": "prod_1",
        "currency": "usd",
        "unit_amount": "1200",
        "recurring.interval": "month",
        "recurring.interval_count": "1",
        "nickname": None,
        "active": "true",
        "metadata.plan": "pro",
    }
    assert PRICE.create_params(values) == {
        "lookup_key": "pro_monthly",
        "product": "prod_1",
        "currency": "usd",
        "unit_amount": 1200,
        "recurring": {"interval": "month", "interval_count": 1},
        "active": True,
        "metadata": {"plan": "pro"},
    }
    assert PRICE.new_version_params(values)["transfer_lookup_key"] is True
    # An update sends only what Stripe lets change on a price.
    assert PRICE.update_params(values) == {
        "lookup_key": "pro_monthly",
        "nickname": "",
        "active": True,
        "metadata": {"plan": "pro"},
    }


def test_a_product_update_never_sends_its_id():
    assert PRODUCT.update_params({"id": "pro", "name": "Pro", "shippable": "false"}) == {
        "name": "Pro",
        "shippable": False,
    }


def test_a_price_read_from_stripe_flattens_to_the_engines_text():
    price = {
        "id": "price_1",
        "lookup_key": "pro_monthly",
        "product": {"id": "prod_1", "name": "Pro"},
        "currency": "usd",
        "unit_amount": 1200,
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed", "meter": None},
        "active": False,
        "metadata": {"plan": "pro"},
    }
    assert PRICE.flatten(price) == {
        "lookup_key": "pro_monthly",
        "product": "prod_1",
        "currency": "usd",
        "unit_amount": "1200",
        "recurring.interval": "month",
        "recurring.interval_count": "1",
        "recurring.usage_type": "licensed",
        "recurring.meter": None,
        "active": "false",
        "metadata.plan": "pro",
    }


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("currency", "US", "bad currency: currency must be a three-letter ISO code such as usd, got 'US'"),
        ("unit_amount", "-5", "negative amount: unit_amount must be 0 or more, got '-5'"),
        ("unit_amount", "12.5", "unit_amount must be a whole number, got '12.5'"),
        (
            "recurring.interval",
            "fortnight",
            "recurring.interval must be one of day, week, month, year, got 'fortnight'",
        ),
    ],
)
def test_price_values_stripe_would_refuse(field, value, problem):
    assert PRICE.lookup_field(field).problem(value) == problem


def write_instance(defs: Path, folder: str, text: str) -> Path:
    (defs / folder).mkdir(parents=True)
    path = defs / folder / "defs.yaml"
    path.write_text("type: census_stripe.StripeSyncComponent\nattributes:\n" + textwrap.indent(text.strip(), "  "))
    return path


def test_a_product_sync_named_by_a_price_sync_must_be_beside_it(tmp_path):
    prices = write_instance(tmp_path, "prices", PRICES)
    with pytest.raises(SyncConfigError) as raised:
        check_product_sync(load_sync_spec(prices), prices.parent)
    assert str(raised.value) == (
        f"{prices}: attributes.product_sync: no sync named 'products' in {tmp_path}: name the sync that writes the "
        "products"
    )
    # Named by its `name`, which need not be its folder's.
    write_instance(
        tmp_path,
        "catalog",
        "name: products\nmodel: m\nobject: product\nbehavior: update_only\nkey: {field: id, column: id}\n",
    )
    check_product_sync(load_sync_spec(prices), prices.parent)


def test_the_asset_description_states_the_object_and_what_a_new_version_does():
    description = sync_description(parse_sync_spec(PRICES, "defs/prices/defs.yaml"), "prices")
    assert "matches each row to a Stripe price by `lookup_key` (column `lookup_key`)" in description
    assert "`product` holds keys of the sync `products`, sent as their Stripe product ids." in description
    assert "creates a new price that takes the lookup_key over, and archives the old one" in description
    assert "| `unit_amount` | `amount` |" in description
