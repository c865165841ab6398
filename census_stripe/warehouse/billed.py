"""What the meter event ledger says was billed, for a finance team to audit.

- The view `<state schema>.meter_event_ledger_billed`, over the ledger: per Stripe account, sync,
  meter (event name), customer and UTC day of the events, the events Stripe accepted and their
  units (the values summed). The whole list, where a run's metadata shows its top customers.
- A run's preview (`summary_sql`): per partition, meter and customer of the run's usage rows, the
  events and units Stripe has (after a run), or will have once the run sends (a dry run), ranked
  by units, with the meter's totals; in the same scan, the count of each verdict per partition.
- A run's outcome per partition (`delivered_sql`): the events it got accepted, left in doubt, or
  saw refused.

Written in DuckDB's SQL over the plan query (plan/meter_events.py), translated with `in_dialect`.
A value Stripe accepted is a decimal number (the plan rejects any other), so casting it is safe.
"""

from __future__ import annotations

from census_stripe.warehouse.base import Relation, Warehouse, literal
from census_stripe.warehouse.ledger import in_dialect

BILLED_VIEW = "meter_event_ledger_billed"
UNITS = "CAST({value} AS DECIMAL(38, 9))"


def billed_view(ledger: Relation) -> Relation:
    return Relation(ledger.schema, BILLED_VIEW, ledger.database)


def billed_view_sql(ledger: Relation) -> str:
    """The view's definition, in DuckDB's SQL."""
    units = UNITS.format(value="value")
    return (
        f"CREATE OR REPLACE VIEW {billed_view(ledger).table().sql('duckdb')} AS "
        "SELECT stripe_account, sync_name, event_name, stripe_customer_id, "
        "CAST(event_time AS DATE) AS usage_date, COUNT(*) AS events, "
        f"SUM({units}) AS units, MAX(accepted_at) AS last_accepted_at "
        f"FROM {ledger.table().sql('duckdb')} WHERE accepted_at IS NOT NULL "
        "GROUP BY stripe_account, sync_name, event_name, stripe_customer_id, CAST(event_time AS DATE)"
    )


def ensure_billed_view(warehouse: Warehouse, ledger: Relation) -> str:
    """(Re)create the view, so that it follows the ledger's columns of this version; returns its
    name as a person types it (`census_stripe.meter_event_ledger_billed`)."""
    warehouse.execute_ddl(in_dialect(warehouse, billed_view_sql(ledger)))
    view = billed_view(ledger)
    return ".".join(filter(None, (view.database, view.schema, view.name)))


def summary_sql(plan_query: str, top: int, pending: tuple[str, ...] = ()) -> str:
    """The plan judged once for two answers, each row tagged by `part`:

    - `verdicts`: per partition, the rows of each verdict (`rows_judged`);
    - `billed`: per partition, meter and customer, the events and units billed, with the customer's
      rank by units and the meter's totals; only the `top` customers of each. `pending`: the
      verdicts of the rows the run is about to send, counted too, at the value it sends: the
      ledger's for an event sent again, the model's for a new one (a dry run's preview, or a run's
      once Stripe accepts all it sends).

    One scan of the plan, grouped two ways: evaluating the plan is what a rerun of a sent partition
    spends its time on."""
    verdicts = ", ".join(literal(verdict).sql("duckdb") for verdict in pending)
    sent_with = UNITS.format(value="COALESCE(sent_value, value)")
    will_send = f" WHEN verdict IN ({verdicts}) THEN {sent_with}" if pending else ""
    return f"""
WITH billed_rows AS (
  SELECT partition_key, verdict, event_name, stripe_customer_id, customer_key,
    CASE WHEN accepted_at IS NOT NULL THEN {UNITS.format(value="sent_value")}{will_send} END AS units
  FROM ({plan_query}) AS planned
),
grouped AS (
  SELECT CASE WHEN GROUPING(verdict) = 0 THEN 'verdicts' ELSE 'billed' END AS part,
    partition_key, verdict, event_name, stripe_customer_id, MIN(customer_key) AS customer_key,
    COUNT(*) AS rows_judged, COUNT(units) AS events, SUM(units) AS units
  FROM billed_rows
  GROUP BY GROUPING SETS ((partition_key, verdict), (partition_key, event_name, stripe_customer_id))
),
ranked AS (
  SELECT *,
    ROW_NUMBER() OVER (PARTITION BY part, partition_key, event_name ORDER BY units DESC, customer_key) AS customer_rank,
    COUNT(*) OVER (PARTITION BY part, partition_key, event_name) AS customers,
    SUM(events) OVER (PARTITION BY part, partition_key, event_name) AS meter_events,
    SUM(units) OVER (PARTITION BY part, partition_key, event_name) AS meter_units
  FROM grouped WHERE part = 'verdicts' OR events > 0
)
SELECT part, partition_key, verdict, rows_judged, event_name, stripe_customer_id, customer_key, events, units,
  customer_rank, customers, meter_events, meter_units
FROM ranked WHERE part = 'verdicts' OR customer_rank <= {int(top)}
ORDER BY part, partition_key, event_name, customer_rank
"""


def delivered_sql(plan_query: str, ledger: Relation, account: str, run_id: str, unsent: str) -> str:
    """After a run sent, before it forgets what it never sent: per partition, its events Stripe
    accepted, those left in doubt, and those the plan still finds `unsent` although the run queued
    every one, with no row of the run left (Stripe refused them; a row never sent is still there)."""
    of_run = f"stripe_account = {literal(account).sql('duckdb')} AND run_id = {literal(run_id).sql('duckdb')}"
    return f"""
SELECT planned.partition_key,
  COUNT(sent.accepted_at) AS accepted,
  COUNT(CASE WHEN sent.attempted_at IS NOT NULL AND sent.accepted_at IS NULL THEN 1 END) AS in_doubt,
  COUNT(CASE WHEN planned.verdict = {literal(unsent).sql("duckdb")} AND sent.event_key IS NULL THEN 1 END) AS refused
FROM ({plan_query}) AS planned
LEFT JOIN (SELECT event_key, attempted_at, accepted_at FROM {ledger.table().sql("duckdb")} WHERE {of_run}) AS sent
  ON sent.event_key = planned.event_key
GROUP BY planned.partition_key
"""
