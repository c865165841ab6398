"""Stripe Products: matched on the product id itself (Stripe takes your own `id` on create) or on an
external id in metadata; archived (`active: false`), never deleted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from census_stripe.objects.base import FieldValues, StripeField, StripeObjectType, fields_by_path, present

if TYPE_CHECKING:
    from stripe.params import ProductCreateParams, ProductUpdateParams

FIELDS = fields_by_path(
    StripeField("id", 255),
    StripeField("name", 5000),
    StripeField("description", 40000),
    StripeField("active", 5, kind="boolean"),
    StripeField("url", 5000),
    StripeField("unit_label", 12),
    StripeField("tax_code", 5000),
    StripeField("statement_descriptor", 22),
    StripeField("shippable", 5, kind="boolean"),
)


def create_params(values: FieldValues) -> ProductCreateParams:
    given = PRODUCT.nested(values, unset_missing=False)
    params: ProductCreateParams = {
        "id": given["id"],
        "name": given["name"],
        "description": given["description"],
        "active": given["active"],
        "url": given["url"],
        "unit_label": given["unit_label"],
        "tax_code": given["tax_code"],
        "statement_descriptor": given["statement_descriptor"],
        "shippable": given["shippable"],
        "metadata": given["metadata"],
    }
    return present(params)


def update_params(values: FieldValues) -> ProductUpdateParams:
    # The id is the key: it never changes, and Stripe cannot change it.
    given = PRODUCT.nested(values, unset_missing=True)
    params: ProductUpdateParams = {
        "name": given["name"],
        "description": given["description"],
        "active": given["active"],
        "url": given["url"],
        "unit_label": given["unit_label"],
        "tax_code": given["tax_code"],
        "statement_descriptor": given["statement_descriptor"],
        "shippable": given["shippable"],
        "metadata": given["metadata"],
    }
    return present(params)


PRODUCT = StripeObjectType(
    name="product",
    plural="products",
    fields=FIELDS,
    key_fields=("id",),
    metadata_keys=True,
    create_params=create_params,
    update_params=update_params,
    required_on_create=(("name",),),
    archivable=True,
    endpoint_prefix="products.",
    listed_by="id",
    id_prefix="prod_",
    custom_ids=True,
)
