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
        "manifest is read from target/manifest.json (`dbt parse` writes it). Default: this repository's dbt_project/.",
    )
    object: Literal["customer", "product", "price"] = pydantic.Field(
        default="customer", description="The kind of Stripe object each model row becomes."
    )
    behavior: Behavior
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
    key: SyncKey
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
    """The settings of one sync, checked, with its name settled."""

    name: str

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
        named = {}
        if self.partitions:
            named["partitions." + ("time" if self.partitions.time else "values") + ".column"] = self.partitions.column
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
    return problems


COMPONENT_TYPE = "census_stripe.StripeSyncComponent"
ATTRIBUTES = "attributes"
# The top-level keys Dagster reads in a defs.yaml.
COMPONENT_FILE_KEYS = {"type", ATTRIBUTES, "template_vars_module", "requirements", "post_processing"}


def sync_spec(settings: SyncSettings, default_name: str, path: Path | str) -> SyncSpec:
    """The settings with their name settled, or SyncConfigError listing every problem at once."""
    spec = SyncSpec.model_validate({**settings.model_dump(exclude_unset=True), "name": settings.name or default_name})
    problems = _semantic_problems(spec)
    if problems:
        raise SyncConfigError(path, [(f"{ATTRIBUTES}.{field}", problem) for field, problem in problems])
    return spec


def parse_sync_spec(text: str, path: Path | str) -> SyncSpec:
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
            path,
            [(".".join([ATTRIBUTES, *(str(part) for part in e["loc"])]), e["msg"]) for e in error.errors()],
        ) from None
    return sync_spec(settings, default_name, path)


def load_sync_spec(path: Path) -> SyncSpec:
    return parse_sync_spec(path.read_text(), path)


def check_model_columns(spec: SyncSpec, model_columns: Iterable[str], path: Path | str) -> None:
    """Fail, naming the file and field, when the sync reads a column its model does not have."""
    available = list(model_columns)
    known = {column.lower() for column in available}
    # The columns come from the model's dbt .yml; a model documented nowhere has none to check.
    declared = f"columns: {', '.join(available)}" if available else "it declares no columns: list them in its dbt .yml"
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
