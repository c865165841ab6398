"""Stripe Prices: matched on `lookup_key`. A price's amount, currency, recurrence and product never
change in Stripe: a change to one of them creates a new price that takes the lookup key over
(`transfer_lookup_key`), and the old price is archived, so that its history stays."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from census_stripe.objects.base import (
    FieldValues,
    StripeField,
    StripeObjectType,
    blank_to_none,
    fields_by_path,
    present,
)

if TYPE_CHECKING:
    from stripe.params import PriceCreateParams, PriceUpdateParams

FIELDS = fields_by_path(
    StripeField("lookup_key", 200),
    # The product sync's key in the model; resolved to the product's Stripe id before planning.
    StripeField("product", 255),
    StripeField("currency", 3, kind="currency"),
    StripeField("unit_amount", 20, kind="non_negative_integer"),
    StripeField("unit_amount_decimal", 40),
    StripeField("recurring.interval", 5, choices=("day", "week", "month", "year")),
    StripeField("recurring.interval_count", 5, kind="non_negative_integer"),
    StripeField("recurring.usage_type", 8, choices=("licensed", "metered")),
    StripeField("billing_scheme", 8, choices=("per_unit", "tiered")),
    StripeField("tax_behavior", 11, choices=("inclusive", "exclusive", "unspecified")),
    StripeField("nickname", 5000),
    StripeField("active", 5, kind="boolean"),
)


def create_params(values: FieldValues) -> PriceCreateParams:
    given = PRICE.nested(values, unset_missing=False)
    params: PriceCreateParams = {
        "lookup_key": given["lookup_key"],
        "product": given["product"],
        "currency": given["currency"],
        "unit_amount": given["unit_amount"],
        "unit_amount_decimal": given["unit_amount_decimal"],
        "recurring": given["recurring"],
        "billing_scheme": given["billing_scheme"],
        "tax_behavior": given["tax_behavior"],
        "nickname": given["nickname"],
        "active": given["active"],
        "metadata": given["metadata"],
    }
    return present(params)


def new_version_params(values: FieldValues) -> PriceCreateParams:
    """A price that replaces another: it takes the lookup key over from the price that holds it."""
    params = create_params(values)
    params["transfer_lookup_key"] = True
    return params


def update_params(values: FieldValues) -> PriceUpdateParams:
    # Only what Stripe lets change on a price; the rest makes a new version (never an update).
    given = PRICE.nested(values, unset_missing=True)
    params: PriceUpdateParams = {
        "lookup_key": given["lookup_key"],
        "tax_behavior": given["tax_behavior"],
        "nickname": given["nickname"],
        "active": given["active"],
        "metadata": given["metadata"],
    }
    return present(params)


# Stripe's zero-decimal currencies (https://docs.stripe.com/currencies#zero-decimal): their amounts
# are in the currency's unit; every other currency's are in hundredths (cents).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


def in_currency_units(amount: str, currency: str) -> str:
    """A Stripe amount (the currency's smallest unit) as people read it: `1000` USD is `10.00`, `1000`
    JPY is `1000`, a `unit_amount_decimal` of `1000.5` USD is `10.005`; anything else as given."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return amount
    if not value.is_finite() or currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return amount
    units = value / 100
    return f"{units:.2f}" if units == round(units, 2) else f"{units.normalize():f}"


def describe_version(values: FieldValues) -> str:
    """`10.00 USD/month`, `2.50 EUR/3 weeks`, `5000 JPY` (one-off): amounts in the currency's units."""
    amount = blank_to_none(values.get("unit_amount")) or blank_to_none(values.get("unit_amount_decimal"))
    currency = values.get("currency") or "?"
    text = f"{in_currency_units(amount, currency) if amount else '?'} {currency.upper()}"
    interval = blank_to_none(values.get("recurring.interval"))
    if interval:
        count = blank_to_none(values.get("recurring.interval_count")) or "1"
        text += f"/{interval}" if count == "1" else f"/{count} {interval}s"
    return text


PRICE = StripeObjectType(
    name="price",
    plural="prices",
    fields=FIELDS,
    key_fields=("lookup_key",),
    metadata_keys=False,
    create_params=create_params,
    update_params=update_params,
    whole_objects=("recurring",),
    immutable=frozenset({"product", "currency", "unit_amount", "unit_amount_decimal", "recurring", "billing_scheme"}),
    new_version_params=new_version_params,
    describe_version=describe_version,
    references={"product": "product"},
    required_on_create=(("product",), ("currency",), ("unit_amount", "unit_amount_decimal")),
    archivable=True,
    endpoint_prefix="prices.",
    write_check_field="nickname",
    listed_by="lookup_key",
    id_prefix="price_",
    custom_ids=True,
)
