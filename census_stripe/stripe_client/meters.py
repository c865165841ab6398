"""The billing meters a meter event sync sends to, checked before its first event.

Stripe bills an event only through the active meter of its event name, reading the customer and
the value from the payload keys that meter names. The v2 stream checks none of that when it
answers: an event without a meter is accepted, then dropped, and nothing is billed. So a run first
lists the account's meters (`GET /v1/billing/meters`) and stops, before any event, when an event
name it is about to send has no active meter, or a meter reads other payload keys than the sync
sends; each problem says which meter, and what to change. Free of the SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CREATE_METER = "Billing > Meters in the Dashboard, or POST /v1/billing/meters"


@dataclass(frozen=True)
class BillingMeter:
    id: str
    event_name: str
    display_name: str
    active: bool
    customer_key: str  # customer_mapping.event_payload_key
    value_key: str  # value_settings.event_payload_key

    @classmethod
    def from_stripe(cls, meter: Mapping[str, Any]) -> BillingMeter:
        return cls(
            id=meter["id"],
            event_name=meter["event_name"],
            display_name=meter.get("display_name") or "",
            active=meter["status"] == "active",
            customer_key=meter["customer_mapping"]["event_payload_key"],
            value_key=meter["value_settings"]["event_payload_key"],
        )

    def __str__(self) -> str:
        named = f" ({self.display_name})" if self.display_name else ""
        return f"meter {self.id}{named}"


class MeterCheckError(RuntimeError):
    """A run would send events that no meter bills as the sync means: it stops before the first one."""

    def __init__(self, sync_name: str, problems: list[str]):
        self.problems = problems
        listed = "\n".join(f"- {problem}" for problem in problems)
        super().__init__(
            f"meter event sync {sync_name!r} sent nothing: Stripe bills an event only through the active meter of "
            f"its event name, reading the payload keys the sync sends.\n{listed}"
        )


def meter_problems(
    meters: Iterable[BillingMeter], event_names: Iterable[str], customer_key: str, value_key: str
) -> list[str]:
    """What stops the events of `event_names`, sent with these payload keys, from being billed;
    empty when each has an active meter that reads them."""
    meters = list(meters)
    problems = []
    for event_name in sorted(event_names):
        named = [meter for meter in meters if meter.event_name == event_name]
        active = [meter for meter in named if meter.active]
        if not active and named:
            problems.append(
                f"the {named[0]} of event name {event_name!r} is deactivated and takes no events: reactivate it "
                f"(the meter's page in the Dashboard, or POST /v1/billing/meters/{named[0].id}/reactivate)"
            )
        elif not active:
            problems.append(
                f"no meter has the event name {event_name!r}: create one with that event name, customer mapping "
                f"key {customer_key!r} and value key {value_key!r} ({CREATE_METER})"
            )
        for meter in active[:1]:
            for setting, sent, read in (
                ("customer_payload_key", customer_key, meter.customer_key),
                ("value_payload_key", value_key, meter.value_key),
            ):
                if sent != read:
                    which = "customer" if setting == "customer_payload_key" else "value"
                    problems.append(
                        f"the {meter} of event name {event_name!r} reads the {which} from payload key {read!r}, "
                        f"the sync sends it as {sent!r}: set meter_event.{setting}: {read} in the sync's defs.yaml"
                    )
    return problems
