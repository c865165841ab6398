"""A sync's settings: the `attributes` of a StripeSyncComponent instance (its `defs.yaml`),
validated before anything runs.

A bad instance fails at load time with `SyncConfigError`, whose message names the file, the field
and what is wrong, e.g. `defs/customers/defs.yaml: attributes.mapping.nmae: unknown Stripe customer
field 'nmae'`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Literal

import pydantic
import yaml

from census_stripe.objects import OBJECT_TYPES, StripeObjectType
from census_stripe.objects.base import METADATA_MAX_KEYS, METADATA_PREFIX, StripeField

Behavior = Literal["update_or_create", "update_only", "create_only"]
DuplicatesPolicy = Literal["reject", "oldest", "newest"]
LookupStrategy = Literal["auto", "list_all", "per_key"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SyncConfigError(ValueError):
    """A sync file that cannot be used; the message lists every problem as `file: field: problem`."""

    def __init__(self, path: Path | str, problems: Iterable[tuple[str, str]]):
        self.path = str(path)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.path}: {field}: {problem}" for field, problem in self.problems))


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class SyncKey(_Strict):
    """How a model row finds its Stripe object."""

    field: str = pydantic.Field(
        description="Customers: `email` or `metadata.<name>`; products: `id` or `metadata.<name>`; "
        "prices: `lookup_key`."
    )
    column: str = pydantic.Field(description="The model column holding the key.")


class WatchSpec(_Strict):
    """Sync when the model's table changes outside Dagster (another scheduler, a loader)."""

    interval_seconds: int = pydantic.Field(default=60, ge=5, description="How often the warehouse is asked.")
    updated_at_column: str | None = pydantic.Field(
        default=None, description="A last-changed timestamp column, folded into the fingerprint."
    )


class AutomationSpec(_Strict):
    eager: bool = pydantic.Field(default=False, description="Sync after every materialization of the model in Dagster.")
    watch: WatchSpec | None = None
    cron: str | None = pydantic.Field(default=None, description="Also sync on this cron schedule (UTC).")


class TimePartitions(_Strict):
    column: str = pydantic.Field(description="A date or timestamp column of the model.")
    granularity: Literal["daily", "weekly", "monthly"]
    start: date = pydantic.Field(description="The first partition.")


class ValuePartitions(_Strict):
    column: str = pydantic.Field(description="A column of the model, e.g. region or segment.")
    values: list[str] = pydantic.Field(min_length=1)


class PartitionsSpec(_Strict):
    """Exactly one of `time` or `values`."""

    time: TimePartitions | None = None
    values: ValuePartitions | None = None

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> PartitionsSpec:
        if (self.time is None) == (self.values is None):
            raise ValueError("give exactly one of `time` or `values`")
        return self

    @property
    def column(self) -> str:
        chosen = self.time or self.values
        assert chosen is not None, "the validator requires exactly one"
        return chosen.column

    @property
    def named_column(self) -> dict[str, str]:
        """The partition column, by the setting that names it."""
        return {"partitions." + ("time" if self.time else "values") + ".column": self.column}


class MeterCustomer(_Strict):
    """Which Stripe customer an event bills."""

    column: str = pydantic.Field(description="The model column naming the customer.")
    sync: str | None = pydantic.Field(
        default=None,
        description="A customer sync in the same defs folder whose key the column holds, resolved to the "
        "customer's id through that sync's writeback. Without it the column holds Stripe ids (cus_...).",
    )


class MeterEventSettings(_Strict):
    """Usage rows become Stripe Billing meter events, each sent once."""

    event_name: str | None = pydantic.Field(
        default=None, description="The meter's event name, the same for every row; or `event_name_column`."
    )
    event_name_column: str | None = pydantic.Field(default=None, description="A column holding the event name.")
    customer: MeterCustomer
    value_column: str = pydantic.Field(description="The usage to bill: a number.")
    timestamp_column: str = pydantic.Field(
        description="When the usage happened: Stripe accepts the past 35 days up to 5 minutes ahead."
    )
    identity: list[str] = pydantic.Field(
        min_length=1,
        description="The columns that make a row one event (e.g. customer and day); the event's identifier "
        "is derived from the event name and their values alone, so renaming the sync sends nothing again.",
    )
    api: Literal["stream", "v1"] = pydantic.Field(
        default="stream",
        description="`stream`: Stripe's v2 meter event stream, 100 events per request (up to 10,000 requests/s "
        "live); `v1`: one event per request (up to 1,000/s live).",
    )
    customer_payload_key: str = pydantic.Field(
        default="stripe_customer_id", description="The meter's customer mapping key in the event payload."
    )
    value_payload_key: str = pydantic.Field(default="value", description="The meter's value key in the payload.")
    allow_negative_values: bool = pydantic.Field(
        default=False,
        description="A negative value lowers the customer's usage (a credit). Off, a row with a negative value "
        "is rejected, as it is most often an error in the model.",
    )
    correct_changed: bool = pydantic.Field(
        default=False,
        description="An event whose value changed in the model after it was sent is cancelled (a meter "
        "event adjustment) and sent again with the new value, while Stripe allows (24 hours). "
        "Otherwise, and afterwards, it is reported and left as sent.",
    )

    @property
    def columns(self) -> dict[str, str]:
        """Every model column read, by the setting that names it."""
        named = {
            "meter_event.customer.column": self.customer.column,
            "meter_event.value_column": self.value_column,
            "meter_event.timestamp_column": self.timestamp_column,
        }
        if self.event_name_column:
            named["meter_event.event_name_column"] = self.event_name_column
        named |= {f"meter_event.identity.{index}": column for index, column in enumerate(self.identity)}
        return named


class SyncSettings(_Strict):
    """Every setting a person writes; checked as a whole by `sync_spec`."""

    name: str | None = pydantic.Field(
        default=None, description="Names the sync asset (stripe/<name>); defaults to the instance's folder name."
    )
    description: str | None = None
    model: str = pydantic.Field(description="The dbt model to read; the sync runs downstream of it.")
    dbt_project: str | None = pydantic.Field(
        default=None,
        description="The dbt project holding the model: a folder, relative to the Dagster project's root. Its "
        "manifest is read from target/manifest.json (`dbt parse` writes it), or target/<warehouse>/manifest.json "
        "where that exists. Default: dbt_project.",
    )
    object: Literal["customer", "product", "price", "meter_event"] = pydantic.Field(
        default="customer", description="The kind of Stripe object each model row becomes."
    )
    behavior: Behavior | None = pydantic.Field(
        default=None, description="Customers, products and prices: required. Meter events are only ever created."
    )
    stripe_resource: str = pydantic.Field(
        default="stripe",
        description="The Dagster resource (a StripeResource) the sync writes through; e.g. another one for a "
        "catalog served elsewhere.",
    )
    archive_missing: bool = pydantic.Field(
        default=False,
        description="Products and prices: archive (`active: false`, never delete) the objects of keys that left "
        "the model. Whole-model runs only.",
    )
    product_sync: str | None = pydantic.Field(
        default=None,
        description="Prices: the sync that writes their products. The price's `product` column holds that sync's "
        "key, resolved to its Stripe id through that sync's state.",
    )
    key: SyncKey | None = pydantic.Field(
        default=None, description="Customers, products and prices: required. Meter events use meter_event.identity."
    )
    meter_event: MeterEventSettings | None = pydantic.Field(
        default=None, description="Meter events: required; how a usage row becomes an event."
    )
    mapping: dict[str, str] = pydantic.Field(default_factory=dict, description="Stripe field <- model column.")
    constants: dict[str, str | int | float | bool] = pydantic.Field(
        default_factory=dict, description="Stripe field <- the same value on every object."
    )
    duplicates_in_stripe: DuplicatesPolicy = pydantic.Field(
        default="reject",
        description="When several Stripe customers have a row's key: reject the row, or use the oldest or "
        "newest of them.",
    )
    lookup: LookupStrategy = pydantic.Field(
        default="auto", description="How keys new to the sync are found in Stripe; see plan/lookup.py."
    )
    max_failure_rate: float = pydantic.Field(
        default=0.1,
        ge=0,
        le=1,
        description="The run fails when more than this share of its Stripe writes fail for good.",
    )
    max_rejected_rate: float = pydantic.Field(
        default=0.05,
        ge=0,
        le=1,
        description="The rejected_rows check fails when more than this share of the rows read is rejected.",
    )
    max_archive_rate: float = pydantic.Field(
        default=0.1,
        ge=0,
        le=1,
        description="With archive_missing: a run that would archive more than this share of the objects the sync "
        "has in Stripe, or anything at all because the model is empty, is refused before any write.",
    )
    max_row_count_change: float | None = pydantic.Field(
        default=None,
        ge=0,
        description="Customers, products and prices: a run whose model (or partition) has grown or shrunk by more "
        "than this share since the last sync is refused before any write, e.g. 0.5 for 50 %. Unset: not checked.",
    )
    mask_personal_data: bool = pydantic.Field(
        default=False, description="Mask emails, names, phones and addresses in the run's metadata."
    )
    keep_changes_days: int = pydantic.Field(
        default=30,
        ge=1,
        description="How long each run's changes stay in the warehouse table census_stripe.sync_changes.",
    )
    automation: AutomationSpec = pydantic.Field(default_factory=AutomationSpec)
    partitions: PartitionsSpec | None = None


class SyncSpec(SyncSettings):
    """The settings of one sync of Stripe objects (customers, products, prices), checked, with its name settled."""

    name: str
    behavior: Behavior
    key: SyncKey

    @property
    def object_type(self) -> StripeObjectType:
        return OBJECT_TYPES[self.object]

    @property
    def columns_by_field(self) -> dict[str, str]:
        """Every Stripe field read from the model, the key's included, to its column."""
        return {self.key.field: self.key.column, **self.mapping}

    @property
    def constant_values(self) -> dict[str, str]:
        """Constants as the strings Stripe stores. A sync that archives the keys that leave its model
        also makes every key in it active, so that a key that comes back is brought back."""
        revived = {"active": "true"} if self.archive_missing and "active" not in self.columns_by_field else {}
        return revived | {field: _as_text(value) for field, value in self.constants.items()}

    @property
    def columns(self) -> list[str]:
        """The model columns the sync reads, each once, in a stable order."""
        return list(dict.fromkeys(self.columns_by_field.values()))

    @property
    def other_columns(self) -> dict[str, str]:
        """Model columns named outside the mapping, by the setting that names them."""
        named = self.partitions.named_column if self.partitions else {}
        if self.automation.watch and self.automation.watch.updated_at_column:
            named["automation.watch.updated_at_column"] = self.automation.watch.updated_at_column
        return named


def _as_text(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _semantic_problems(spec: SyncSpec) -> list[tuple[str, str]]:
    problems = []
    object_type = spec.object_type
    if not _NAME.match(spec.name):
        problems.append(("name", f"use letters, digits and underscores, starting with a letter, got {spec.name!r}"))
    if not _NAME.match(spec.stripe_resource):
        problems.append(
            ("stripe_resource", f"a Dagster resource key: letters, digits and _, got {spec.stripe_resource!r}")
        )
    key = spec.key.field
    if problem := object_type.key_problem(key):
        problems.append(("key.field", problem))
    if spec.lookup == "per_key" and key != object_type.listed_by:
        problems.append(("lookup", f"per_key lookups need a {object_type.listed_by} key; Stripe cannot list by {key}"))
    fields: dict[str, StripeField] = {}
    for section, names in (("key.field", [key]), ("mapping", spec.mapping), ("constants", spec.constants)):
        for name in names:
            where = section if section == "key.field" else f"{section}.{name}"
            try:
                fields[name] = object_type.lookup_field(name)
            except ValueError as error:
                problems.append((where, str(error)))
    for name in spec.mapping:
        if name == key:
            problems.append((f"mapping.{name}", "the key field is sent from key.column; remove it from mapping"))
        if name in spec.constants:
            problems.append((f"constants.{name}", "this field is already mapped from a column"))
    if key in spec.constants:
        problems.append((f"constants.{key}", "the key field cannot be a constant"))
    for name, value in spec.constant_values.items():
        field = fields.get(name)
        if field and (problem := field.problem(value)):
            problems.append((f"constants.{name}", problem))
    problems += _catalog_problems(spec)
    if spec.partitions and (spec.automation.watch or spec.automation.cron):
        problems.append(
            ("automation", "watch and cron sync the whole model; a partitioned sync runs per partition (backfills)")
        )
    metadata_keys = {name for name in fields if name.startswith(METADATA_PREFIX)}
    if len(metadata_keys) > METADATA_MAX_KEYS:
        problems.append(
            ("mapping", f"Stripe allows {METADATA_MAX_KEYS} metadata keys, this sync writes {len(metadata_keys)}")
        )
    return problems


def _catalog_problems(spec: SyncSpec) -> list[tuple[str, str]]:
    """What the object type asks of a sync: fields Stripe needs to create one, references to
    other syncs, archiving."""
    object_type = spec.object_type
    problems = []
    given = spec.columns_by_field.keys() | spec.constants.keys()
    if spec.behavior != "update_only":
        for names in object_type.required_on_create:
            if not given & set(names):
                needed = " or ".join(f"`{name}`" for name in names)
                which = "map it" if len(names) == 1 else "map one"
                problems.append(("mapping", f"Stripe needs {needed} to create a {object_type.name}: {which}"))
    for name, referenced in object_type.references.items():
        setting = f"{referenced}_sync"
        if name in given and getattr(spec, setting) is None:
            problems.append((setting, f"`{name}` holds keys of a {referenced} sync: name that sync here"))
    if spec.product_sync is not None and "product" not in object_type.references:
        problems.append(("product_sync", f"only prices refer to a product sync, not a {object_type.name}"))
    if spec.archive_missing:
        if not object_type.archivable:
            problems.append(("archive_missing", f"{object_type.plural} are never deleted or archived by a sync"))
        elif spec.partitions:
            problems.append(
                ("archive_missing", "a partition holds part of the model: only a whole-model sync can archive")
            )
    elif "max_archive_rate" in spec.model_fields_set:
        problems.append(("max_archive_rate", "only a sync with archive_missing: true archives"))
    return problems


COMPONENT_TYPE = "census_stripe.StripeSyncComponent"
ATTRIBUTES = "attributes"
# The top-level keys Dagster reads in a defs.yaml.
COMPONENT_FILE_KEYS = {"type", ATTRIBUTES, "template_vars_module", "requirements", "post_processing"}


class MeterEventSpec(SyncSettings):
    """The settings of one meter event sync, checked, with its name settled."""

    name: str
    meter_event: MeterEventSettings

    @property
    def other_columns(self) -> dict[str, str]:
        """Every model column the sync reads, by the setting that names it."""
        return self.meter_event.columns | (self.partitions.named_column if self.partitions else {})


AnySyncSpec = SyncSpec | MeterEventSpec

# What a meter event sync must leave unset, and why.
_NOT_FOR_METER_EVENTS = {
    "key": "meter events have no key: meter_event.identity names the columns that make a row one event",
    "mapping": "a meter event's fields are set under meter_event",
    "constants": "a meter event's fields are set under meter_event",
    "archive_missing": "meter events are never archived",
    "max_archive_rate": "meter events are never archived",
    "max_row_count_change": "a usage model grows by design, and an event sent stays billed whatever the model "
    "holds later: the row count is not guarded",
    "product_sync": "only prices refer to a product sync",
    "automation": "a meter event sync runs per partition, or when you start it",
}


def _meter_event_problems(spec: MeterEventSpec) -> list[tuple[str, str]]:
    problems = []
    if not _NAME.match(spec.name):
        problems.append(("name", f"use letters, digits and underscores, starting with a letter, got {spec.name!r}"))
    given = spec.model_fields_set
    for setting, why in _NOT_FOR_METER_EVENTS.items():
        if setting in given and getattr(spec, setting):
            problems.append((setting, why))
    if spec.behavior not in (None, "create_only"):
        problems.append(("behavior", "meter events are only ever created: leave behavior out, or create_only"))
    meter = spec.meter_event
    if (meter.event_name is None) == (meter.event_name_column is None):
        problems.append(("meter_event", "give exactly one of event_name or event_name_column"))
    if meter.event_name is not None and not 0 < len(meter.event_name) <= MAX_EVENT_NAME:
        problems.append(("meter_event.event_name", f"Stripe takes 1 to {MAX_EVENT_NAME} characters"))
    if len(set(meter.identity)) != len(meter.identity):
        problems.append(("meter_event.identity", "a column is named twice"))
    if meter.customer_payload_key == meter.value_payload_key:
        problems.append(("meter_event.value_payload_key", "the customer and the value need two payload keys"))
    return problems


MAX_EVENT_NAME = 100


def _as_problems(error: pydantic.ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(part) for part in e["loc"]), e["msg"]) for e in error.errors()]


def sync_spec(settings: SyncSettings, default_name: str, path: Path | str) -> AnySyncSpec:
    """The settings with their name settled, or SyncConfigError listing every problem at once."""
    data = {**settings.model_dump(exclude_unset=True), "name": settings.name or default_name}
    spec: AnySyncSpec
    try:
        if settings.object == "meter_event":
            spec = MeterEventSpec.model_validate(data)
            problems = _meter_event_problems(spec)
        else:
            spec = SyncSpec.model_validate(data)
            problems = _semantic_problems(spec)
    except pydantic.ValidationError as error:
        problems = _as_problems(error)
    if problems:
        raise SyncConfigError(path, [(f"{ATTRIBUTES}.{field}", problem) for field, problem in problems])
    return spec


def object_sync_spec(settings: SyncSettings, default_name: str, path: Path | str) -> SyncSpec:
    """`sync_spec` for where only a sync of Stripe objects fits (customers, products, prices)."""
    spec = sync_spec(settings, default_name, path)
    if not isinstance(spec, SyncSpec):
        raise SyncConfigError(path, [(f"{ATTRIBUTES}.object", "expected a customer, product or price sync")])
    return spec


def parse_sync_spec(text: str, path: Path | str) -> AnySyncSpec:
    """A StripeSyncComponent's defs.yaml read without Dagster (the demo's summary, benchmarks, tests),
    or its attributes alone; the name defaults to the instance's folder, or the file's stem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SyncConfigError(path, [("(file)", "not valid YAML: " + " ".join(str(error).split()))]) from None
    if not isinstance(document, dict):
        raise SyncConfigError(path, [("(file)", "expected a mapping of settings at the top level")])
    if "type" in document:
        if document["type"] != COMPONENT_TYPE:
            raise SyncConfigError(path, [("type", f"expected {COMPONENT_TYPE}, got {document['type']!r}")])
        # A setting outdented beside `attributes` would be silently lost.
        misplaced = sorted(set(document) - COMPONENT_FILE_KEYS)
        if misplaced:
            raise SyncConfigError(
                path, [(key, "not a component file key: indent it under attributes") for key in misplaced]
            )
        raw, default_name = document.get(ATTRIBUTES) or {}, Path(path).parent.name
    else:
        raw, default_name = document, Path(path).stem
    try:
        settings = SyncSettings.model_validate(raw)
    except pydantic.ValidationError as error:
        raise SyncConfigError(
            path, [(f"{ATTRIBUTES}.{field}", problem) for field, problem in _as_problems(error)]
        ) from None
    return sync_spec(settings, default_name, path)


def load_sync_spec(path: Path) -> AnySyncSpec:
    return parse_sync_spec(path.read_text(), path)


def check_model_columns(spec: AnySyncSpec, model_columns: Iterable[str], path: Path | str) -> None:
    """Fail, naming the file and field, when the sync reads a column its model does not have."""
    available = list(model_columns)
    known = {column.lower() for column in available}
    # The columns come from the model's dbt .yml; a model documented nowhere has none to check.
    declared = f"columns: {', '.join(available)}" if available else "it declares no columns: list them in its dbt .yml"
    named = {}
    if isinstance(spec, SyncSpec):
        named = {"key.column" if f == spec.key.field else f"mapping.{f}": c for f, c in spec.columns_by_field.items()}
    problems = [
        (
            f"{ATTRIBUTES}.{setting}",
            f"column {column!r} is not in model {spec.model!r} ({declared})",
        )
        for setting, column in {**named, **spec.other_columns}.items()
        if column.lower() not in known
    ]
    if problems:
        raise SyncConfigError(path, problems)
