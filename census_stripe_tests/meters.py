"""Billing meters in the Stripe double, created as a person creates them before billing usage: every
test that sends meter events creates the meters they are for (the runs check, and so does the double)."""

from __future__ import annotations

from census_stripe.stripe_client.client import make_client


def create_meter(
    url: str,
    event_name: str = "api_calls",
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
    api_key: str = "sk_test_meters",
) -> str:
    """An active meter summing `event_name`'s values per customer; returns its id."""
    meter = make_client(api_key, url, max_network_retries=0).v1.billing.meters.create(
        params={
            "display_name": event_name.replace("_", " ").capitalize(),
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": customer_key},
            "value_settings": {"event_payload_key": value_key},
        }
    )
    return meter.id


def deactivate_meter(url: str, meter_id: str, api_key: str = "sk_test_meters") -> None:
    make_client(api_key, url, max_network_retries=0).v1.billing.meters.deactivate(meter_id)
