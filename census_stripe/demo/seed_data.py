"""Deterministic demo data: the raw tables a loader would land in the warehouse.

Writes `raw_users.csv`, `raw_subscriptions.csv` and `raw_orders.csv` into the dbt project's seeds
folder. The same size always gives the same bytes, so a second `make demo` finds nothing to sync.

It also writes the price book, `raw_catalog_products.csv` and `raw_catalog_prices.csv`: three plans
(starter, pro, enterprise) at a monthly and a yearly price in USD and EUR, and an add-on (extra
seats, monthly). With `pro_price_raised`, Pro's monthly USD price is 12.00 instead of 10.00: the
demo raises it once the catalog is in Stripe, so its second run shows a new version of a price.

A handful of users are deliberately bad, because real customer tables are: invalid emails, a null
email, one email present twice in different case, and a name longer than Stripe accepts. The sync
must reject exactly those rows, with a reason each, and sync everything else.

    python -m census_stripe.demo.seed_data            # DEMO_CUSTOMERS users, 300 by default
    DEMO_CUSTOMERS=50000 python -m census_stripe.demo.seed_data
"""

from __future__ import annotations

import csv
import io
import os
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from census_stripe.settings import DBT_PROJECT_DIR

DEFAULT_CUSTOMERS = 300
SEED_DIR = DBT_PROJECT_DIR / "seeds"
EPOCH = datetime(2023, 1, 1)

FIRST_NAMES = [
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "Guido",
    "Katherine",
    "Donald",
    "Sophie",
    "John",
    "Mary",
    "Yukihiro",
    "Anita",
    "Bjarne",
    "Shafi",
    "Leslie",
    "Jean",
    "Niklaus",
    "Carol",
    "Vint",
    "Lynn",
    "Ward",
]
LAST_NAMES = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "van Rossum",
    "Johnson",
    "Knuth",
    "Wilson",
    "McCarthy",
    "Kenneth",
    "Matsumoto",
    "Borg",
    "Stroustrup",
    "Goldwasser",
    "Lamport",
    "Sammet",
    "Wirth",
    "Shaw",
    "Cerf",
    "Conway",
    "Cunningham",
]
# country, region, [(city, state, postal code prefix)], phone prefix
GEOGRAPHY = [
    ("US", "NA", [("San Francisco", "CA", "941"), ("Austin", "TX", "787"), ("Brooklyn", "NY", "112")], "+1 415"),
    ("CA", "NA", [("Toronto", "ON", "M5V"), ("Vancouver", "BC", "V6B")], "+1 604"),
    ("GB", "EU", [("London", "", "EC1"), ("Manchester", "", "M1 ")], "+44 20"),
    ("DE", "EU", [("Berlin", "BE", "101"), ("Munich", "BY", "803")], "+49 30"),
    ("FR", "EU", [("Paris", "", "750"), ("Lyon", "", "690")], "+33 1"),
    ("AU", "APAC", [("Sydney", "NSW", "200"), ("Melbourne", "VIC", "300")], "+61 2"),
    ("JP", "APAC", [("Tokyo", "", "100"), ("Osaka", "", "530")], "+81 3"),
]
STREETS = ["Market St", "Main St", "High Street", "Hauptstrasse", "Rue de Rivoli", "George St", "Ginza"]
PLANS = [("starter", 29), ("growth", 99), ("pro", 249), ("enterprise", 999)]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com"]


@dataclass(frozen=True)
class BadRow:
    """A deliberately broken user, and the reason the sync must give for rejecting it."""

    email: str | None
    first_name: str
    why: str


# Placed at fixed user ids so tests can name them; the sync rejects each of these.
BAD_ROWS = {
    7: BadRow("not-an-email", "Ivy", "invalid email"),
    13: BadRow("jane.doe@", "Jane", "invalid email"),
    21: BadRow(None, "Nemo", "null email"),
    34: BadRow("Casey.Jordan@Example.com", "Casey", "duplicate email, first spelling"),
    35: BadRow("casey.jordan@example.com", "Casey", "duplicate email, second spelling"),
    55: BadRow("maximilian.long@example.com", "Maximilian" + " Alexander" * 30, "name too long"),
}
# The price book. Products: key, name, description, tier, unit label. Prices: each product's
# monthly price in cents per currency, and whether it is also sold by the year (for ten months).
CATALOG_PRODUCTS = [
    ("prod_demo_starter", "Starter", "For one person getting started.", "starter", None),
    ("prod_demo_pro", "Pro", "For teams that bill every month.", "pro", None),
    ("prod_demo_enterprise", "Enterprise", "For companies with many teams.", "enterprise", None),
    ("prod_demo_extra_seats", "Extra seats", "One more seat on any plan.", "addon", "seat"),
]
MONTHLY_CENTS = {
    "prod_demo_starter": ({"usd": 500, "eur": 450}, True),
    "prod_demo_pro": ({"usd": 1000, "eur": 900}, True),
    "prod_demo_enterprise": ({"usd": 5000, "eur": 4500}, True),
    "prod_demo_extra_seats": ({"usd": 200, "eur": 180}, False),
}
MONTHS_BILLED_PER_YEAR = 10
RAISED_PRICE = ("pro_monthly_usd", 1000, 1200)  # lookup key, cents before, cents after
# A price whose product is missing from the catalog: the sync rejects it, naming the product key.
PRICE_OF_UNKNOWN_PRODUCT = {
    "lookup_key": "sso_monthly_usd",
    "product_key": "prod_demo_sso",
    "currency": "usd",
    "unit_amount": 300,
    "recurring_interval": "month",
    "nickname": "SSO monthly (USD)",
    "plan": "addon",
}
# Valid rows a careless sync would mangle: surrounding spaces and capitals are fine after trimming.
MESSY_EMAILS = {10: "  Grace.Hopper10@Example.COM ", 20: "LINUS.TORVALDS20@EXAMPLE.ORG"}


def generate(customers: int = DEFAULT_CUSTOMERS, seed: int = 42) -> dict[str, list[dict]]:
    """The raw tables as lists of rows; identical for identical arguments."""
    rng = random.Random(seed)
    users: list[dict] = []
    subscriptions: list[dict] = []
    orders: list[dict] = []
    for user_id in range(1, customers + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        country, region, places, phone_prefix = rng.choice(GEOGRAPHY)
        city, state, postal_prefix = rng.choice(places)
        signup_at = EPOCH + timedelta(minutes=rng.randrange(0, 60 * 24 * 700))
        email: str | None = f"{first}.{last.replace(' ', '')}{user_id}@{rng.choice(DOMAINS)}".lower()
        bad = BAD_ROWS.get(user_id)
        if bad:
            email, first = bad.email, bad.first_name
        email = MESSY_EMAILS.get(user_id, email)
        users.append(
            {
                "user_id": user_id,
                "email": email,
                "first_name": first,
                "last_name": last,
                "phone": f"{phone_prefix} {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
                "street": f"{rng.randrange(1, 999)} {rng.choice(STREETS)}",
                "unit": f"Suite {rng.randrange(100, 900)}" if rng.random() < 0.3 else None,
                "city": city,
                "state": state or None,
                "postal_code": f"{postal_prefix}{rng.randrange(10, 99)}",
                "country": country,
                "region": region,
                "signup_at": signup_at,
                "updated_at": signup_at + timedelta(days=rng.randrange(0, 30)),
            }
        )
        if rng.random() < 0.8:
            plan, monthly_price = rng.choice(PLANS)
            started_at = signup_at + timedelta(days=rng.randrange(0, 14))
            canceled = rng.random() < 0.15
            subscriptions.append(
                {
                    "subscription_id": len(subscriptions) + 1,
                    "user_id": user_id,
                    "plan": plan,
                    "status": "canceled" if canceled else "active",
                    "monthly_price": monthly_price,
                    "started_at": started_at,
                    "canceled_at": started_at + timedelta(days=rng.randrange(30, 200)) if canceled else None,
                }
            )
            for month in range(rng.randrange(1, 12)):
                orders.append(
                    {
                        "order_id": len(orders) + 1,
                        "user_id": user_id,
                        "amount_cents": monthly_price * 100,
                        "status": "refunded" if rng.random() < 0.05 else "paid",
                        "ordered_at": started_at + timedelta(days=30 * month),
                    }
                )
    return {"raw_users": users, "raw_subscriptions": subscriptions, "raw_orders": orders}


def catalog(pro_price_raised: bool = False) -> dict[str, list[dict]]:
    """The price book as raw tables: products, and prices named by lookup key."""
    products = [
        {"product_key": key, "name": name, "description": description, "tier": tier, "unit_label": unit_label}
        for key, name, description, tier, unit_label in CATALOG_PRODUCTS
    ]
    raised_key, _, raised_cents = RAISED_PRICE
    prices = []
    for key, name, _, tier, _ in CATALOG_PRODUCTS:
        cents_by_currency, also_yearly = MONTHLY_CENTS[key]
        periods = [("monthly", "month", 1)] + ([("yearly", "year", MONTHS_BILLED_PER_YEAR)] if also_yearly else [])
        for period, interval, months in periods:
            for currency, monthly_cents in cents_by_currency.items():
                lookup_key = f"{key.removeprefix('prod_demo_')}_{period}_{currency}"
                raised = pro_price_raised and lookup_key == raised_key
                prices.append(
                    {
                        "lookup_key": lookup_key,
                        "product_key": key,
                        "currency": currency,
                        "unit_amount": raised_cents if raised else monthly_cents * months,
                        "recurring_interval": interval,
                        "nickname": f"{name} {period} ({currency.upper()})",
                        "plan": tier,
                    }
                )
    return {"raw_catalog_products": products, "raw_catalog_prices": [*prices, dict(PRICE_OF_UNKNOWN_PRODUCT)]}


USAGE_DAYS = 7  # complete days of API usage before today, one daily partition each


def api_usage(users: list[dict], seed: int = 7) -> dict[str, list[dict]]:
    """API calls per user and day, for the last USAGE_DAYS complete days. Stored as days before
    today, so the usage is always recent (Stripe takes meter events of the past 35 days only)."""
    rng = random.Random(seed)
    rows = [
        {"user_id": user["user_id"], "days_ago": days_ago, "api_calls": rng.randrange(0, 5000)}
        for user in users
        if user["user_id"] % 3 == 0  # a third of the users call the API
        for days_ago in range(1, USAGE_DAYS + 1)
    ]
    return {"raw_api_usage": rows}


def write_seeds(
    customers: int = DEFAULT_CUSTOMERS, seed_dir: Path = SEED_DIR, pro_price_raised: bool = False
) -> dict[str, int]:
    """Write the raw tables as dbt seed CSVs; returns the row count of each."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    raw = generate(customers)
    for table, rows in (raw | catalog(pro_price_raised) | api_usage(raw["raw_users"])).items():
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        replace_file(seed_dir / f"{table}.csv", text.getvalue().encode())
        counts[table] = len(rows)
    return counts


def replace_file(path: Path, data: bytes) -> None:
    """`path` holds `data` afterwards. Other processes may be reading it (a dbt build of another run,
    another test) or writing it at the same moment: each writes a file of its own beside it and renames
    that into place, so a reader sees the old bytes or the new, never half; the same bytes are left
    alone."""
    if path.exists() and path.read_bytes() == data:
        return
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def demo_customer_count() -> int:
    return int(os.environ.get("DEMO_CUSTOMERS", DEFAULT_CUSTOMERS))


if __name__ == "__main__":
    for table, count in write_seeds(demo_customer_count()).items():
        print(f"{table}: {count} rows")
