"""The Stripe objects a sync can write, by the name a sync file gives in `object:`."""

from census_stripe.objects.base import StripeObjectType
from census_stripe.objects.customer import CUSTOMER
from census_stripe.objects.price import PRICE
from census_stripe.objects.product import PRODUCT

OBJECT_TYPES: dict[str, StripeObjectType] = {t.name: t for t in (CUSTOMER, PRODUCT, PRICE)}


def foreign_id_prefixes(object_type: StripeObjectType) -> tuple[str, ...]:
    """How the ids of the other objects begin: an id that begins so is never one of `object_type`
    (a `prod_` id in a customer sync's state is damage)."""
    return tuple(other.id_prefix for other in OBJECT_TYPES.values() if other is not object_type)


def is_id_of(object_type: StripeObjectType, stripe_id: str) -> bool:
    """Whether `stripe_id` can name an object of `object_type`: never another object's kind of id,
    and, for objects whose ids Stripe always makes, one of their own kind (SQL's twin:
    `plan.sql.id_of_type`)."""
    if stripe_id.startswith(foreign_id_prefixes(object_type)):
        return False
    return object_type.custom_ids or stripe_id.startswith(object_type.id_prefix)
