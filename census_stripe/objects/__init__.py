"""The Stripe objects a sync can write, by the name a sync file gives in `object:`."""

from census_stripe.objects.base import StripeObjectType
from census_stripe.objects.customer import CUSTOMER
from census_stripe.objects.price import PRICE
from census_stripe.objects.product import PRODUCT

OBJECT_TYPES: dict[str, StripeObjectType] = {t.name: t for t in (CUSTOMER, PRODUCT, PRICE)}
