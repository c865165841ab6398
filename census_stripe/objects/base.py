"""What the engine knows of one kind of Stripe object, in one place: its writable fields and their
limits, the keys a sync may match it on, which fields Stripe replaces whole or never changes, whether
a sync may archive it, and how its values travel to and from Stripe.

Fields are named by dotted paths (`address.city`, `recurring.interval`, `metadata.plan`), the names a
sync file uses. The engine compares flat text values; `flatten` reads a Stripe object into them and
each type's `create_params`/`update_params` build the SDK's typed request parameters from them.
Limits come from Stripe's API reference; see docs/stripe.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

METADATA_PREFIX = "metadata."
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500

FieldValues = Mapping[str, "str | None"]
FieldKind = Literal["text", "integer", "non_negative_integer", "boolean", "currency"]
BOOLEAN_TEXT = ("true", "false")
_CURRENCY = re.compile(r"^[a-z]{3}$")


def blank_to_none(value: str | None) -> str | None:
    """Stripe reads an empty string as "unset": both spellings of nothing compare equal."""
    return value if value not in ("", None) else None


@dataclass(frozen=True)
class StripeField:
    path: str
    max_length: int
    choices: tuple[str, ...] = ()
    kind: FieldKind = "text"

    @property
    def integer(self) -> bool:
        return self.kind in ("integer", "non_negative_integer")

    def problem(self, value: str) -> str | None:
        """Why Stripe would refuse `value` here, or None. Used on constants and on every row."""
        if self.choices and value not in self.choices:
            return f"{self.path} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.kind == "currency" and not _CURRENCY.match(value):
            return f"bad currency: {self.path} must be a three-letter ISO code such as usd, got {value!r}"
        if len(value) > self.max_length:
            return f"value too long: {self.path} has {len(value)} characters, Stripe allows {self.max_length}"
        if self.integer:
            try:
                number = int(value)
            except ValueError:
                return f"{self.path} must be a whole number, got {value!r}"
            if self.kind == "non_negative_integer" and number < 0:
                return f"negative amount: {self.path} must be 0 or more, got {value!r}"
        if self.kind == "boolean" and value not in BOOLEAN_TEXT:
            return f"{self.path} must be true or false, got {value!r}"
        return None

    def normalize(self, value: str) -> str:
        """The spelling Stripe gives back: currencies lower-cased, booleans as true/false."""
        return value.lower() if self.kind in ("currency", "boolean") else value

    def to_stripe(self, value: str) -> str | int | bool:
        if self.integer:
            return int(value)
        if self.kind == "boolean":
            return value == "true"
        return value


_METADATA_KEY = re.compile(rf"^[^\[\]]{{1,{METADATA_KEY_MAX_LENGTH}}}$")


def metadata_key_problem(key: str) -> str | None:
    """Why Stripe would refuse this metadata key, or None if it is fine."""
    if not _METADATA_KEY.match(key):
        return f"metadata keys are 1 to {METADATA_KEY_MAX_LENGTH} characters without square brackets, got {key!r}"
    return None


def fields_by_path(*fields: StripeField) -> dict[str, StripeField]:
    return {f.path: f for f in fields}


def _stripe_text(value: object) -> str | None:
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


Params = TypeVar("Params", bound=Mapping[str, Any])


class Nested(dict[str, Any]):
    """Nested parameters, read by name: a parameter not given reads as None (left out by `present`)."""

    def __missing__(self, name: str) -> None:
        return None


def present(params: Params) -> Params:
    """`params` without the parameters left out (None). Each type builds its params as a literal
    annotated with the SDK's TypedDict, so that mypy checks every parameter's name."""
    return {name: value for name, value in params.items() if value is not None}  # type: ignore[return-value]


@dataclass(frozen=True)
class StripeObjectType:
    """One kind of Stripe object a sync can write (objects/customer.py, product.py, price.py)."""

    name: str  # `customer`: in messages, the sync file's `object:` and dashboard links
    plural: str  # `customers`: the SDK service (`client.v1.customers`) and the dashboard's path
    fields: dict[str, StripeField]
    key_fields: tuple[str, ...]  # the fields a row may be matched on, besides `metadata.<name>`
    metadata_keys: bool  # whether `metadata.<name>` may be the key
    create_params: Callable[[FieldValues], Mapping[str, Any]]
    update_params: Callable[[FieldValues], Mapping[str, Any]]
    # Stripe replaces these objects whole on update (only metadata merges), so a change to any
    # part of one sends all of its mapped parts.
    whole_objects: tuple[str, ...] = ()
    # Fields Stripe never changes on an existing object; a change makes a new version instead.
    immutable: frozenset[str] = frozenset()
    # How a new version is created in place of an old one (prices: `transfer_lookup_key`).
    new_version_params: Callable[[FieldValues], Mapping[str, Any]] | None = None
    # A version in words for people (`1000 USD/month`), to show what a new version changes.
    describe_version: Callable[[FieldValues], str] | None = None
    # `field: product`: the model gives another sync's key, resolved to that sync's Stripe id.
    references: Mapping[str, str] = field(default_factory=dict)
    # What Stripe needs to create one: each entry a field, or fields of which one is enough.
    required_on_create: tuple[tuple[str, ...], ...] = ()
    archivable: bool = False  # `active: false`, never deleted
    # A rate-limit and call-count name per endpoint. Customers keep the bare names (`create`,
    # `list`) the counts and rate settings have always used.
    endpoint_prefix: str = ""
    # A text field the write-access check blanks, on an object that cannot exist.
    write_check_field: str = "description"
    # The key field Stripe can list by (`email=`, `lookup_keys[]=`), or retrieve by (`id`).
    listed_by: str | None = None
    # How the ids Stripe makes for these objects begin (`cus_`). With `custom_ids`, an object may
    # carry an id of someone's choosing instead (a product's own `id`, a price made as a legacy plan).
    id_prefix: str = ""
    custom_ids: bool = False

    def endpoint(self, verb: str) -> str:
        return self.endpoint_prefix + verb

    def lookup_field(self, path: str) -> StripeField:
        """The field named by `path`; raises ValueError with the known names if there is none."""
        if path.startswith(METADATA_PREFIX):
            problem = metadata_key_problem(path[len(METADATA_PREFIX) :])
            if problem:
                raise ValueError(problem)
            return StripeField(path, METADATA_VALUE_MAX_LENGTH)
        try:
            return self.fields[path]
        except KeyError:
            known = ", ".join([*self.fields, "metadata.<key>"])
            raise ValueError(f"unknown Stripe {self.name} field {path!r}; known fields: {known}") from None

    def whole_object_of(self, path: str) -> str | None:
        """The replaced-whole object this field belongs to (`address`, `shipping`), if any."""
        return next((name for name in self.whole_objects if path.startswith(name + ".")), None)

    def key_problem(self, path: str) -> str | None:
        if path in self.key_fields or (self.metadata_keys and path.startswith(METADATA_PREFIX)):
            return None
        allowed = [f"`{name}`" for name in self.key_fields] + (["`metadata.<name>`"] if self.metadata_keys else [])
        return f"the mapping key is {' or '.join(allowed)}, got {path!r}"

    def flatten(self, stripe_object: Mapping) -> dict[str, str | None]:
        """An object's fields as dotted paths, the way sync files name them."""
        flat: dict[str, str | None] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, Mapping):
                for key, child in value.items():
                    walk(f"{prefix}{key}.", child)
            else:
                flat[prefix[:-1]] = _stripe_text(value)

        top_level = dict.fromkeys(path.split(".", 1)[0] for path in self.fields)
        for name in top_level:
            if name in stripe_object:
                value = stripe_object[name]
                if name in self.references and isinstance(value, Mapping):
                    value = value.get("id")  # an expanded reference
                walk(f"{name}.", value)
        for key, value in (stripe_object.get("metadata") or {}).items():
            flat[METADATA_PREFIX + key] = value
        return {path: blank_to_none(value) for path, value in flat.items()}

    def nested(self, values: FieldValues, unset_missing: bool) -> Nested:
        """Flat values as Stripe's nested parameters, converted to the types Stripe's API takes.

        On create (`unset_missing=False`) empty values are left out. On update they become "" so
        that Stripe clears them, and a whole object whose mapped parts are all empty is cleared.
        """
        params = Nested()
        objects_with_content: set[str] = set()
        for path, value in values.items():
            value = blank_to_none(value)
            stripe_field = self.lookup_field(path)
            whole = self.whole_object_of(path)
            if value is None and (not unset_missing or whole):
                continue
            if whole:
                objects_with_content.add(whole)
            *parents, leaf = path.split(".")
            target = params
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = "" if value is None else stripe_field.to_stripe(value)
        if unset_missing:
            touched = {name for path in values if (name := self.whole_object_of(path))}
            for name in touched - objects_with_content:
                params[name] = ""
        return params

    @property
    def has_versions(self) -> bool:
        """Whether a change to an immutable field makes a new object (a price) rather than an error."""
        return self.new_version_params is not None

    def version_text(self, values: FieldValues) -> str:
        """A version in words: the type's own wording, or its immutable fields' values."""
        if self.describe_version:
            return self.describe_version(values)
        return ", ".join(f"{name} {values[name]}" for name in sorted(self.immutable) if values.get(name))

    def immutable_changes(self, changed: set[str]) -> set[str]:
        return {path for path in changed if path in self.immutable or path.split(".", 1)[0] in self.immutable}
