"""Stripe Customers: matched on email or an external id in metadata; never archived or deleted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from census_stripe.objects.base import FieldValues, StripeField, StripeObjectType, fields_by_path, present

if TYPE_CHECKING:
    # Checked by mypy only: planning never imports the SDK.
    from stripe.params import CustomerCreateParams, CustomerUpdateParams

_ADDRESS_PARTS = ("line1", "line2", "city", "state", "postal_code", "country")

FIELDS = fields_by_path(
    StripeField("email", 512),
    StripeField("name", 256),
    StripeField("phone", 20),
    StripeField("description", 5000),
    *(StripeField(f"address.{part}", 5000) for part in _ADDRESS_PARTS),
    StripeField("shipping.name", 5000),
    StripeField("shipping.phone", 5000),
    *(StripeField(f"shipping.address.{part}", 5000) for part in _ADDRESS_PARTS),
    StripeField("tax_exempt", 7, choices=("none", "exempt", "reverse")),
    StripeField("balance", 20, kind="integer"),
)


def create_params(values: FieldValues) -> CustomerCreateParams:
    given = CUSTOMER.nested(values, unset_missing=False)
    params: CustomerCreateParams = {
        "email": given["email"],
        "name": given["name"],
        "phone": given["phone"],
        "description": given["description"],
        "address": given["address"],
        "shipping": given["shipping"],
        "tax_exempt": given["tax_exempt"],
        "balance": given["balance"],
        "metadata": given["metadata"],
    }
    return present(params)


def update_params(values: FieldValues) -> CustomerUpdateParams:
    given = CUSTOMER.nested(values, unset_missing=True)
    params: CustomerUpdateParams = {
        "email": given["email"],
        "name": given["name"],
        "phone": given["phone"],
        "description": given["description"],
        "address": given["address"],
        "shipping": given["shipping"],
        "tax_exempt": given["tax_exempt"],
        "balance": given["balance"],
        "metadata": given["metadata"],
    }
    return present(params)


CUSTOMER = StripeObjectType(
    name="customer",
    plural="customers",
    fields=FIELDS,
    key_fields=("email",),
    metadata_keys=True,
    create_params=create_params,
    update_params=update_params,
    whole_objects=("shipping", "address"),
    listed_by="email",
    id_prefix="cus_",
)
