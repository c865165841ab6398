from census_stripe.warehouse.base import Relation, Warehouse

__all__ = ["Relation", "Warehouse"]
