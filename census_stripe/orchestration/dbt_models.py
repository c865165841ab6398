"""A sync's source model, read from its dbt project's manifest alone: the asset key dbt's Dagster
assets give it, its relation in the warehouse, its declared columns.

Nothing here loads a dbt project, so a user's own project imports it without this repository's.
"""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator

from census_stripe.warehouse.base import Relation


@dataclass(frozen=True)
class DbtModel:
    """What a sync needs to know about its source model, from the manifest alone."""

    name: str
    asset_key: dg.AssetKey
    relation: Relation
    columns: tuple[str, ...]
    description: str


@cache
def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def find_model(name: str, manifest_path: Path) -> DbtModel | None:
    """The model as the manifest names it, for the target the manifest was parsed for."""
    for node in _manifest(manifest_path)["nodes"].values():
        if node["resource_type"] == "model" and node["name"] == name:
            return DbtModel(
                name=name,
                # The key dagster-dbt's assets (and DbtProjectComponent) give the model by default.
                asset_key=DagsterDbtTranslator().get_asset_key(node),
                relation=Relation(node["schema"], node.get("alias") or name),
                columns=tuple(node["columns"]),
                description=node.get("description", ""),
            )
    return None


def model_names(manifest_path: Path) -> list[str]:
    return sorted(n["name"] for n in _manifest(manifest_path)["nodes"].values() if n["resource_type"] == "model")
