"""The Stripe Customer fields a sync may write, with the limits Stripe enforces on them.

Fields are named by dotted paths (`address.city`, `metadata.plan`), the same names a sync file uses.
Limits come from Stripe's API reference; see docs/stripe.md and the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METADATA_PREFIX = "metadata."
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500

# Stripe replaces these objects whole on update (only metadata merges), so a change to any part of
# one sends all of its mapped parts.
WHOLE_OBJECTS = ("shipping", "address")


@dataclass(frozen=True)
class StripeField:
    path: str
    max_length: int
    choices: tuple[str, ...] = ()
    integer: bool = False

    @property
    def object_name(self) -> str | None:
        """The replaced-whole object this field belongs to (`address`, `shipping`), if any."""
        return next((name for name in WHOLE_OBJECTS if self.path.startswith(name + ".")), None)


_ADDRESS_PARTS = ("line1", "line2", "city", "state", "postal_code", "country")

CUSTOMER_FIELDS: dict[str, StripeField] = {
    f.path: f
    for f in [
        StripeField("email", 512),
        StripeField("name", 256),
        StripeField("phone", 20),
        StripeField("description", 5000),
        *(StripeField(f"address.{part}", 5000) for part in _ADDRESS_PARTS),
        StripeField("shipping.name", 5000),
        StripeField("shipping.phone", 5000),
        *(StripeField(f"shipping.address.{part}", 5000) for part in _ADDRESS_PARTS),
        StripeField("tax_exempt", 7, choices=("none", "exempt", "reverse")),
        StripeField("balance", 20, integer=True),
    ]
}

_METADATA_KEY = re.compile(rf"^[^\[\]]{{1,{METADATA_KEY_MAX_LENGTH}}}$")


def metadata_key_problem(key: str) -> str | None:
    """Why Stripe would refuse this metadata key, or None if it is fine."""
    if not _METADATA_KEY.match(key):
        return f"metadata keys are 1 to {METADATA_KEY_MAX_LENGTH} characters without square brackets, got {key!r}"
    return None


def lookup_field(path: str) -> StripeField:
    """The field named by `path`; raises ValueError with the known names if there is none."""
    if path.startswith(METADATA_PREFIX):
        problem = metadata_key_problem(path[len(METADATA_PREFIX) :])
        if problem:
            raise ValueError(problem)
        return StripeField(path, METADATA_VALUE_MAX_LENGTH)
    try:
        return CUSTOMER_FIELDS[path]
    except KeyError:
        known = ", ".join([*CUSTOMER_FIELDS, "metadata.<key>"])
        raise ValueError(f"unknown Stripe customer field {path!r}; known fields: {known}") from None
