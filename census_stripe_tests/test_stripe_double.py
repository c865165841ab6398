"""The Stripe test double behaves as docs/stripe.md says Stripe does; the tests and
benchmarks that use it rely on that."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe

from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.stripe_client.client import make_client
from census_stripe_tests.meters import create_meter

# Token buckets of a few requests that take 100 s to refill: the requests of a test meet the limit
# exactly, however long a busy machine takes between them.
WINDOW = 100


def limits(**requests_per_window: int) -> dict:
    """The double's rate limits as this many requests per WINDOW, in buckets holding a WINDOW's worth."""
    return {name: count / WINDOW for name, count in requests_per_window.items()} | {"rate_window_seconds": WINDOW}


@pytest.fixture
def customers(double):
    return make_client("sk_test_double", double.url, max_network_retries=0).v1.customers


def test_lists_newest_first_in_pages_and_filters_email_exactly(double, customers):
    ids = double.load([{"email": f"u{i}@x.com"} for i in range(250)] + [{"email": "U1@x.com"}])
    seen, params = [], {"limit": 100}
    while True:
        page = customers.list(params=params)
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        params = {"limit": 100, "starting_after": page.data[-1].id}
    assert seen == ids[::-1]
    assert [c.email for c in customers.list(params={"email": "u1@x.com"}).data] == ["u1@x.com"]
    customers.update(ids[2], params={"email": "u1@x.com"})
    assert [c.id for c in customers.list(params={"email": "u1@x.com"}).data] == [ids[2], ids[1]]


def test_update_merges_metadata_replaces_objects_and_unsets_blanks(customers):
    created = customers.create(
        params={
            "email": "a@x.com",
            "name": "A",
            "address": {"city": "Paris", "line1": "1 Rue"},
            "metadata": {"a": "1", "b": "2"},
        }
    )
    updated = customers.update(
        created.id, params={"name": "", "address": {"city": "Lyon"}, "metadata": {"a": "", "c": "3"}}
    )
    assert updated.name is None
    assert updated.address.to_dict() == {"city": "Lyon"}
    assert updated.metadata.to_dict() == {"b": "2", "c": "3"}


def test_idempotency_replays_the_first_response_and_refuses_other_parameters(double, customers):
    first = customers.create(params={"email": "a@x.com"}, options={"idempotency_key": "k1"})
    again = customers.create(params={"email": "a@x.com"}, options={"idempotency_key": "k1"})
    assert again.id == first.id  # the products' bucket is empty, the prices' is not
    double.configure(endpoint_rate=0)
    with pytest.raises(stripe.IdempotencyError):
        customers.create(params={"email": "b@x.com"}, options={"idempotency_key": "k1"})
    assert double.stats()["customers"] == 1


def test_a_key_replays_for_24_hours_then_is_new_again(double, customers):
    first = customers.create(params={"email": "day@x.com"}, options={"idempotency_key": "k-day"})
    double.advance_clock(24 * 3600 - 60)
    assert customers.create(params={"email": "day@x.com"}, options={"idempotency_key": "k-day"}).id == first.id
    double.advance_clock(120)
    second = customers.create(params={"email": "day@x.com"}, options={"idempotency_key": "k-day"})
    assert second.id != first.id
    assert double.stats()["customers"] == 2


def test_a_lost_response_hides_a_done_write_that_the_same_key_replays(double, customers):
    double.configure(fail_after_rate=1.0)
    with pytest.raises(stripe.APIError):
        customers.create(params={"email": "lost@x.com"}, options={"idempotency_key": "k-lost"})
    assert double.stats()["customers"] == 1
    double.configure(fail_after_rate=0.0)
    replayed = customers.create(params={"email": "lost@x.com"}, options={"idempotency_key": "k-lost"})
    [stored] = customers.list(params={"limit": 10}).data
    assert replayed.id == stored.id
    assert double.stats()["customers"] == 1


def test_rate_limits_answer_429_before_idempotency(double, customers):
    double.configure(**limits(endpoint_rate=2))
    customers.create(params={"email": "a@x.com"}, options={"idempotency_key": "a"})
    customers.create(params={"email": "b@x.com"}, options={"idempotency_key": "b"})
    with pytest.raises(stripe.RateLimitError):
        customers.create(params={"email": "c@x.com"}, options={"idempotency_key": "c"})
    stats = double.stats()
    assert (stats["rate_limited"], stats["customers"]) == (1, 2)


def test_read_only_keys_cannot_write(double):
    double.configure(read_only_keys=["rk_test_readonly"])
    client = make_client("rk_test_readonly", double.url, max_network_retries=0)
    assert client.v1.customers.list(params={"limit": 1}).data == []
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.create(params={"email": "a@x.com"})


def test_a_request_whose_client_dies_before_its_body_is_sent_does_nothing(double):
    # urllib3 writes the headers and the body separately: a client killed in between leaves only the headers.
    body = b"email=a%40x.com&name=Ann&metadata[plan]=pro"
    with socket.create_connection(("127.0.0.1", double.port)) as connection:
        connection.sendall(
            b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_test_double\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:10])
        )
    stats = wait_for_stats(double, "incomplete_requests")
    assert stats["customers"] == 0 and stats.get("done_create", 0) == 0


def wait_for_stats(double, name: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while not (stats := double.stats()).get(name):
        assert time.monotonic() < deadline, f"the double never counted {name}"
        time.sleep(0.05)
    return stats


@pytest.fixture
def client(double):
    return make_client("sk_test_double", double.url, max_network_retries=0).v1


def error_of(call) -> dict:
    """Stripe's error object for a request the double refuses."""
    with pytest.raises(stripe.InvalidRequestError) as refused:
        call()
    return {"status": refused.value.http_status, "code": refused.value.code, "param": refused.value.param}


def test_products_take_your_own_id_once_and_merge_metadata_on_update(client):
    created = client.products.create(
        params={
            "id": "prod_demo_pro",
            "name": "Pro",
            "description": "For teams",
            "images": ["https://example.com/pro.png"],
            "metadata": {"tier": "pro", "old": "1"},
            "shippable": False,
        }
    )
    assert (created.id, created.active, created.images, created.shippable) == (
        "prod_demo_pro",
        True,
        ["https://example.com/pro.png"],
        False,
    )
    assert error_of(lambda: client.products.create(params={"id": "prod_demo_pro", "name": "Again"})) == {
        "status": 400,
        "code": "resource_already_exists",
        "param": "id",
    }
    assert error_of(lambda: client.products.create(params={"description": "no name"}))["code"] == "parameter_missing"
    updated = client.products.update(
        "prod_demo_pro", params={"description": "", "unit_label": "seat", "metadata": {"old": "", "new": "2"}}
    )
    assert (updated.description, updated.unit_label) == (None, "seat")
    assert updated.metadata.to_dict() == {"tier": "pro", "new": "2"}
    assert error_of(lambda: client.products.update("prod_demo_pro", params={"name": ""}))["code"] == (
        "parameter_invalid_empty"
    )
    assert client.products.retrieve("prod_demo_pro").unit_label == "seat"
    assert error_of(lambda: client.products.retrieve("prod_nope"))["code"] == "resource_missing"


def test_products_list_newest_first_in_pages_and_filter_active(client):
    ids = [client.products.create(params={"name": f"P{i}"}).id for i in range(5)]
    client.products.update(ids[1], params={"active": False})
    first = client.products.list(params={"limit": 2})
    second = client.products.list(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [p.id for p in first.data + second.data] == ids[::-1][:4]
    assert first.has_more and second.has_more
    assert [p.id for p in client.products.list(params={"active": False}).data] == [ids[1]]
    active = client.products.list(params={"active": True, "limit": 2, "starting_after": ids[2]}).data
    assert [p.id for p in active] == [ids[0]]


def test_prices_are_created_on_an_existing_product_with_stripe_defaults(client):
    client.products.create(params={"id": "prod_pro", "name": "Pro"})
    monthly = client.prices.create(
        params={
            "product": "prod_pro",
            "currency": "USD",
            "unit_amount": 1000,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_monthly_usd",
            "nickname": "Pro monthly",
            "metadata": {"plan": "pro"},
        }
    )
    assert monthly.id.startswith("price_")
    assert (monthly.currency, monthly.unit_amount, monthly.unit_amount_decimal, monthly.type) == (
        "usd",
        1000,
        Decimal("1000"),  # the SDK reads Stripe's decimal strings as Decimals
        "recurring",
    )
    assert (monthly.recurring.interval, monthly.recurring.interval_count, monthly.recurring.usage_type) == (
        "month",
        1,
        "licensed",
    )
    assert (monthly.active, monthly.billing_scheme, monthly.tax_behavior) == (True, "per_unit", "unspecified")
    one_time = client.prices.create(params={"product": "prod_pro", "currency": "eur", "unit_amount_decimal": "12.5"})
    assert (one_time.type, one_time.recurring, one_time.unit_amount, one_time.unit_amount_decimal) == (
        "one_time",
        None,
        None,
        Decimal("12.5"),
    )
    assert error_of(
        lambda: client.prices.create(params={"product": "prod_nope", "currency": "usd", "unit_amount": 1})
    ) == {"status": 400, "code": "resource_missing", "param": "product"}


@pytest.mark.parametrize(
    "params, param",
    [
        ({"currency": "usx", "unit_amount": 100}, "currency"),
        ({"currency": "usd", "unit_amount": -100}, "unit_amount"),
        ({"currency": "usd", "unit_amount": 100, "unit_amount_decimal": "100"}, "unit_amount"),
        ({"currency": "usd"}, "unit_amount"),
        ({"currency": "usd", "unit_amount": 100, "recurring": {"interval": "fortnight"}}, "recurring[interval]"),
        (
            {"currency": "usd", "unit_amount": 100, "recurring": {"interval": "month", "interval_count": 37}},
            "recurring[interval_count]",
        ),
        ({"currency": "usd", "unit_amount": 100, "lookup_key": "k" * 201}, "lookup_key"),
    ],
)
def test_prices_refuse_what_stripe_refuses_and_create_nothing(double, client, params, param):
    client.products.create(params={"id": "prod_pro", "name": "Pro"})
    assert error_of(lambda: client.prices.create(params={"product": "prod_pro", **params}))["param"] == param
    assert double.stats()["prices"] == 0


def test_a_price_keeps_its_amount_currency_recurrence_and_product(client):
    client.products.create(params={"id": "prod_pro", "name": "Pro"})
    client.products.create(params={"id": "prod_other", "name": "Other"})
    price = client.prices.create(
        params={"product": "prod_pro", "currency": "usd", "unit_amount": 1000, "recurring": {"interval": "month"}}
    )
    for change in (
        {"unit_amount": 1200},
        {"unit_amount_decimal": "1200"},
        {"currency": "eur"},
        {"recurring": {"interval": "year"}},
        {"product": "prod_other"},
    ):
        [name] = change
        assert error_of(lambda change=change: client.prices.update(price.id, params=change)) == {
            "status": 400,
            "code": "parameter_unknown",
            "param": name,
        }
    updated = client.prices.update(price.id, params={"nickname": "Pro", "metadata": {"v": "1"}, "active": False})
    assert (updated.nickname, updated.metadata.to_dict(), updated.active, updated.unit_amount) == (
        "Pro",
        {"v": "1"},
        False,
        1000,
    )
    assert client.prices.retrieve(price.id).active is False  # archived, still readable


def test_tax_behavior_is_set_once(client):
    client.products.create(params={"id": "prod_pro", "name": "Pro"})
    price = client.prices.create(params={"product": "prod_pro", "currency": "usd", "unit_amount": 5})
    assert client.prices.update(price.id, params={"tax_behavior": "exclusive"}).tax_behavior == "exclusive"
    assert client.prices.update(price.id, params={"tax_behavior": "exclusive"}).tax_behavior == "exclusive"
    assert error_of(lambda: client.prices.update(price.id, params={"tax_behavior": "inclusive"}))["param"] == (
        "tax_behavior"
    )


def test_a_lookup_key_belongs_to_one_price_and_moves_only_when_transferred(client):
    client.products.create(params={"id": "prod_pro", "name": "Pro"})
    base = {"product": "prod_pro", "currency": "usd", "recurring": {"interval": "month"}}
    old = client.prices.create(params={**base, "unit_amount": 1000, "lookup_key": "pro_monthly_usd"})
    assert (
        error_of(lambda: client.prices.create(params={**base, "unit_amount": 1200, "lookup_key": "pro_monthly_usd"}))[
            "param"
        ]
        == "lookup_key"
    )
    other = client.prices.create(params={**base, "unit_amount": 900, "lookup_key": "other"})
    assert error_of(lambda: client.prices.update(other.id, params={"lookup_key": "pro_monthly_usd"}))["param"] == (
        "lookup_key"
    )

    new = client.prices.create(
        params={**base, "unit_amount": 1200, "lookup_key": "pro_monthly_usd", "transfer_lookup_key": True}
    )
    client.prices.update(old.id, params={"active": False})
    assert client.prices.retrieve(old.id).lookup_key is None
    found = client.prices.list(params={"lookup_keys": ["pro_monthly_usd", "other", "unknown"]}).data
    assert [p.id for p in found] == [new.id, other.id]
    assert [p.id for p in client.prices.list(params={"active": False}).data] == [old.id]
    assert [p.id for p in client.prices.list(params={"product": "prod_pro", "limit": 100}).data] == [
        new.id,
        other.id,
        old.id,
    ]
    # Moved back by an update, and unset with "".
    client.prices.update(old.id, params={"lookup_key": "pro_monthly_usd", "transfer_lookup_key": True})
    assert client.prices.retrieve(new.id).lookup_key is None
    client.prices.update(old.id, params={"lookup_key": ""})
    assert client.prices.list(params={"lookup_keys": ["pro_monthly_usd"]}).data == []
    assert error_of(lambda: client.prices.list(params={"lookup_keys": [f"k{i}" for i in range(11)]}))["param"] == (
        "lookup_keys"
    )


def test_catalog_endpoints_have_their_own_rate_limits_idempotency_and_stats(double, client):
    double.configure(**limits(endpoint_rate=2))
    client.products.create(params={"id": "prod_a", "name": "A"}, options={"idempotency_key": "p"})
    replayed = client.products.create(params={"id": "prod_a", "name": "A"}, options={"idempotency_key": "p"})
    assert replayed.id == "prod_a"
    with pytest.raises(stripe.RateLimitError):
        client.products.create(params={"name": "B"})
    first = client.prices.create(
        params={"product": "prod_a", "currency": "usd", "unit_amount": 1}, options={"idempotency_key": "q"}
    )
    again = client.prices.create(
        params={"product": "prod_a", "currency": "usd", "unit_amount": 1}, options={"idempotency_key": "q"}
    )
    assert again.id == first.id  # the products' bucket is empty, the prices' is not
    double.configure(endpoint_rate=0)
    with pytest.raises(stripe.IdempotencyError):
        client.prices.create(
            params={"product": "prod_a", "currency": "usd", "unit_amount": 2}, options={"idempotency_key": "q"}
        )
    stats = double.stats()
    assert (stats["products"], stats["prices"], stats["idempotent_replays"], stats["rate_limited"]) == (1, 1, 2, 1)
    assert (stats["requests_product_create"], stats["done_product_create"]) == (3, 1)
    assert (stats["requests_price_create"], stats["done_price_create"]) == (3, 1)


def test_a_store_keeps_the_catalog_between_processes(tmp_path):
    store = tmp_path / "catalog.json"
    with StripeDoubleServer(store=store) as server:
        v1 = make_client("sk_test_double", server.url, max_network_retries=0).v1
        v1.products.create(params={"id": "prod_pro", "name": "Pro"})
        price = v1.prices.create(
            params={"product": "prod_pro", "currency": "usd", "unit_amount": 1000, "lookup_key": "pro"},
            options={"idempotency_key": "pro-1"},
        )
        v1.customers.create(params={"email": "a@x.com"})
    with StripeDoubleServer(store=store) as server:
        v1 = make_client("sk_test_double", server.url, max_network_retries=0).v1
        assert v1.prices.retrieve(price.id).lookup_key == "pro"
        assert v1.products.retrieve("prod_pro").name == "Pro"
        assert [c.email for c in v1.customers.list().data] == ["a@x.com"]
        replayed = v1.prices.create(
            params={"product": "prod_pro", "currency": "usd", "unit_amount": 1000, "lookup_key": "pro"},
            options={"idempotency_key": "pro-1"},
        )
        assert replayed.id == price.id
        assert (
            error_of(
                lambda: v1.prices.create(
                    params={"product": "prod_pro", "currency": "usd", "unit_amount": 1, "lookup_key": "pro"}
                )
            )["param"]
            == "lookup_key"
        )


def test_a_store_saved_with_whole_idempotency_fingerprints_still_replays_its_keys(tmp_path):
    # As the double saved its stored responses before it kept them as strings: the parameters' JSON, an object.
    product = {"id": "prod_a", "object": "product", "name": "A", "active": True}
    store = tmp_path / "catalog.json"
    store.write_text(
        json.dumps(
            {
                "customers": [],
                "deleted": [],
                "products": [product],
                "prices": [],
                "idempotent": {"k-old": ['["product_create", null, {"id": "prod_a", "name": "A"}]', 200, product]},
                "clock": 1_700_000_000,
            }
        )
    )
    with StripeDoubleServer(store=store) as server:
        products = make_client("sk_test_double", server.url, max_network_retries=0).v1.products
        replayed = products.create(params={"id": "prod_a", "name": "A"}, options={"idempotency_key": "k-old"})
        assert (replayed.id, server.stats()["idempotent_replays"]) == ("prod_a", 1)
        with pytest.raises(stripe.IdempotencyError):
            products.create(params={"id": "prod_a", "name": "B"}, options={"idempotency_key": "k-old"})


# -- meter events ------------------------------------------------------------------------------

DAY = 24 * 3600


@pytest.fixture
def stripe_client(double) -> stripe.StripeClient:
    """Both of Stripe's hosts, the API and the meter event stream's, at the double."""
    return stripe.StripeClient(
        "sk_test_double", base_addresses={"api": double.url, "meter_events": double.url}, max_network_retries=0
    )


@pytest.fixture
def meters(double) -> dict[str, str]:
    """The meters of the events the tests send, by event name: ids."""
    return {name: create_meter(double.url, name) for name in ("api_calls", "storage_gb")}


def usage(customer: str, value: str, identifier: str, event_name: str = "api_calls", **fields) -> dict:
    return {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
        "identifier": identifier,
        **fields,
    }


def test_meters_are_created_listed_and_deactivated_as_stripe_does(double, client):
    created = client.billing.meters.create(
        params={
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "value_settings": {"event_payload_key": "calls"},
        }
    )
    assert created.id.startswith("mtr_") and (created.object, created.status) == ("billing.meter", "active")
    assert (created.customer_mapping.to_dict(), created.value_settings.event_payload_key) == (
        {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "calls",
    )
    assert client.billing.meters.retrieve(created.id).event_name == "api_calls"
    taken = {"display_name": "Again", "event_name": "api_calls", "default_aggregation": {"formula": "count"}}
    assert error_of(lambda: client.billing.meters.create(params=taken))["param"] == "event_name"
    bad = {"display_name": "Odd", "event_name": "odd", "default_aggregation": {"formula": "median"}}
    assert error_of(lambda: client.billing.meters.create(params=bad))["param"] == "default_aggregation[formula]"
    others = [create_meter(double.url, f"other_{i}") for i in range(105)]

    deactivated = client.billing.meters.deactivate(created.id)
    assert (deactivated.status, bool(deactivated.status_transitions.deactivated_at)) == ("inactive", True)
    replacement = client.billing.meters.create(params=taken)  # the event name is free again
    listed = [meter.id for meter in client.billing.meters.list(params={"limit": 100}).auto_paging_iter()]
    assert listed == [replacement.id, *others[::-1], created.id]  # newest first
    inactive = client.billing.meters.list(params={"status": "inactive"}).data
    assert [meter.id for meter in inactive] == [created.id]
    assert error_of(lambda: client.billing.meters.reactivate(created.id))["status"] == 400  # its name is taken
    client.billing.meters.deactivate(replacement.id)
    assert client.billing.meters.reactivate(created.id).status == "active"


def test_an_event_without_an_active_meter_is_refused_by_v1_and_dropped_by_the_stream(double, client, stripe_client):
    """v1 validates an event's meter when it answers; the stream answers first, then drops the event
    into the error report (`no_meter`, `archived_meter`): billed nowhere, and no error to the sender."""
    [ann] = double.load([{"email": "ann@x.com"}])
    retired = create_meter(double.url, "retired")
    client.billing.meters.deactivate(retired)
    for event_name in ("unmetered", "retired"):
        refused = usage(ann, "1", f"v1-{event_name}", event_name=event_name)
        assert error_of(lambda refused=refused: client.billing.meter_events.create(params=refused)) == {
            "status": 400,
            "code": "resource_missing",
            "param": "event_name",
        }
    token = stripe_client.v2.billing.meter_event_session.create().authentication_token
    stream(stripe_client, token, [usage(ann, "1", "s1", event_name="unmetered"), usage(ann, "1", "s2", "retired")])
    summary = double.meter_events()
    assert (summary["counted"], summary["sums"]) == (0, {})
    assert summary["errors"] == [
        {"identifier": "s1", "event_name": "unmetered", "reason": "no_meter"},
        {"identifier": "s2", "event_name": "retired", "reason": "archived_meter"},
    ]


def test_meter_events_are_summed_per_meter_and_customer(double, client, meters):
    ann, bob = double.load([{"email": "ann@x.com"}, {"email": "bob@x.com"}])
    event = client.billing.meter_events.create(params=usage(ann, "3", "e1", timestamp=int(time.time()) - 3600))
    assert (event.object, event.identifier, event.payload.to_dict(), event.livemode) == (
        "billing.meter_event",
        "e1",
        {"stripe_customer_id": ann, "value": "3"},
        False,
    )
    client.billing.meter_events.create(params=usage(ann, "0.5", "e2"))
    client.billing.meter_events.create(params=usage(bob, "4", "e3"))
    client.billing.meter_events.create(params=usage(bob, "1", "e4", event_name="storage_gb"))
    generated = client.billing.meter_events.create(
        params={"event_name": "api_calls", "payload": {"stripe_customer_id": bob, "value": "1"}}
    )
    assert generated.identifier
    summary = double.meter_events()
    assert summary["sums"] == {"api_calls": {ann: 3.5, bob: 5}, "storage_gb": {bob: 1}}
    assert (summary["counted"], summary["counted_more_than_once"], summary["errors"]) == (5, 0, [])
    stats = double.stats()
    assert (stats["requests_meter_event_create"], stats["done_meter_event_create"]) == (5, 5)


def test_an_identifier_is_refused_for_a_day_then_counted_again(double, client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    client.billing.meter_events.create(params=usage(ann, "2", "e1"))
    assert error_of(lambda: client.billing.meter_events.create(params=usage(ann, "2", "e1"))) == {
        "status": 400,
        "code": "resource_already_exists",
        "param": "identifier",
    }
    assert double.meter_events()["sums"] == {"api_calls": {ann: 2}}
    double.advance_clock(25 * 3600)
    client.billing.meter_events.create(params=usage(ann, "2", "e1"))  # Stripe forgot it: counted twice
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"], summary["sums"]) == (2, 1, {"api_calls": {ann: 4}})


@pytest.mark.parametrize("offset", [-36 * DAY, 301 + 5])
def test_a_meter_event_outside_stripes_time_window_is_refused(double, client, meters, offset):
    [ann] = double.load([{"email": "ann@x.com"}])
    refused = usage(ann, "1", "e1", timestamp=int(time.time()) + offset)
    assert error_of(lambda: client.billing.meter_events.create(params=refused))["param"] == "timestamp"
    client.billing.meter_events.create(params=usage(ann, "1", "e2", timestamp=int(time.time()) - 34 * DAY))
    assert double.meter_events()["sums"] == {"api_calls": {ann: 1}}


def test_a_meter_event_without_its_meters_keys_is_refused(double, client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    no_value = {"event_name": "api_calls", "payload": {"stripe_customer_id": ann}}
    assert error_of(lambda: client.billing.meter_events.create(params=no_value)) == {
        "status": 400,
        "code": "parameter_missing",
        "param": "payload[value]",
    }
    create_meter(double.url, "calls", customer_key="customer", value_key="calls")
    client.billing.meter_events.create(params={"event_name": "calls", "payload": {"customer": ann, "calls": "7"}})
    assert double.meter_events()["sums"] == {"calls": {ann: 7}}


def test_an_unknown_customer_or_a_value_not_a_number_is_accepted_then_reported(double, client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    client.billing.meter_events.create(params=usage("cus_nobody", "1", "e1"))
    client.billing.meter_events.create(params=usage(ann, "1e3", "e2"))
    summary = double.meter_events()
    assert (summary["counted"], summary["sums"]) == (0, {})
    assert summary["errors"] == [
        {"identifier": "e1", "event_name": "api_calls", "reason": "meter_event_customer_not_found"},
        {"identifier": "e2", "event_name": "api_calls", "reason": "meter_event_invalid_value"},
    ]
    client.billing.meter_events.create(params=usage(ann, "1", "e2"))  # never counted, so not taken either
    assert double.meter_events()["sums"] == {"api_calls": {ann: 1}}


def test_a_meter_event_is_cancelled_within_a_day_and_not_after(double, client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    for identifier in ("e1", "e2"):
        client.billing.meter_events.create(params=usage(ann, "5", identifier))
    adjustment = client.billing.meter_event_adjustments.create(
        params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "e1"}}
    )
    assert (adjustment.object, adjustment.status, adjustment.cancel.identifier) == (
        "billing.meter_event_adjustment",
        "pending",
        "e1",
    )
    summary = double.meter_events()
    assert (summary["counted"], summary["cancelled"], summary["sums"]) == (1, 1, {"api_calls": {ann: 5}})
    cancel = {"event_name": "api_calls", "type": "cancel"}
    for identifier in ("e1", "never_sent"):
        refused = {**cancel, "cancel": {"identifier": identifier}}
        assert error_of(lambda refused=refused: client.billing.meter_event_adjustments.create(params=refused)) == {
            "status": 400,
            "code": None,
            "param": "cancel[identifier]",
        }
    double.advance_clock(25 * 3600)
    late = {**cancel, "cancel": {"identifier": "e2"}}
    assert error_of(lambda: client.billing.meter_event_adjustments.create(params=late))["param"] == "cancel[identifier]"
    assert double.meter_events()["sums"] == {"api_calls": {ann: 5}}


def test_an_idempotency_key_replays_a_meter_event_instead_of_refusing_its_identifier(double, client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    double.configure(fail_after_rate=1.0)
    with pytest.raises(stripe.APIError):
        client.billing.meter_events.create(params=usage(ann, "2", "e1"), options={"idempotency_key": "k1"})
    double.configure(fail_after_rate=0.0)
    replayed = client.billing.meter_events.create(params=usage(ann, "2", "e1"), options={"idempotency_key": "k1"})
    assert replayed.identifier == "e1"
    assert double.meter_events()["sums"] == {"api_calls": {ann: 2}}
    assert double.stats()["idempotent_replays"] == 1


def test_live_mode_meter_events_have_a_rate_limit_of_their_own(double, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    live = make_client("sk_live_double", double.url, max_network_retries=0).v1
    double.configure(**limits(account_rate=1, endpoint_rate=1, meter_event_rate=3))
    for identifier in ("e1", "e2", "e3"):
        live.billing.meter_events.create(params=usage(ann, "1", identifier))
    with pytest.raises(stripe.RateLimitError):
        live.billing.meter_events.create(params=usage(ann, "1", "e4"))
    assert double.meter_events()["counted"] == 3


def test_test_mode_meter_events_count_against_the_accounts_limit(double, client, meters):
    """Stripe: in test mode, v1 meter events count toward the account's basic limit, not a limit of their own."""
    [ann] = double.load([{"email": "ann@x.com"}])
    live = make_client("sk_live_double", double.url, max_network_retries=0).v1
    double.configure(**limits(account_rate=1))
    client.customers.retrieve(ann)  # the account's one request of the window
    with pytest.raises(stripe.RateLimitError):
        client.billing.meter_events.create(params=usage(ann, "1", "e1"))
    live.billing.meter_events.create(params=usage(ann, "1", "e2"))
    assert double.meter_events()["counted"] == 1


def stream(stripe_client, token: str, events: list[dict]) -> None:
    stripe_client.v2.billing.meter_event_stream.create(params={"events": events}, options={"api_key": token})


def test_the_stream_takes_up_to_100_events_and_judges_them_after_answering(double, stripe_client, meters):
    ann, bob = double.load([{"email": "ann@x.com"}, {"email": "bob@x.com"}])
    session = stripe_client.v2.billing.meter_event_session.create()
    assert (session.object, session.livemode) == ("v2.billing.meter_event_session", False)
    assert session.id.startswith("mes_") and session.authentication_token
    assert datetime.fromisoformat(session.expires_at.replace("Z", "+00:00")) - datetime.fromisoformat(
        session.created.replace("Z", "+00:00")
    ) == timedelta(minutes=15)
    events = [usage(ann if i % 2 else bob, "1", f"s{i}") for i in range(100)]
    events[0]["timestamp"] = (datetime.now(UTC) - timedelta(days=36)).isoformat()
    stream(stripe_client, session.authentication_token, events)
    for too_many in ([usage(ann, "1", f"t{i}") for i in range(101)], [{"event_name": "api_calls"}]):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            stream(stripe_client, session.authentication_token, too_many)
        assert refused.value.http_status == 400
    summary = double.meter_events()
    assert summary["sums"] == {"api_calls": {ann: 50, bob: 49}}
    assert summary["errors"] == [{"identifier": "s0", "event_name": "api_calls", "reason": "timestamp_too_far_in_past"}]
    stats = double.stats()
    assert (stats["meter_event_sessions"], stats["requests_meter_event_stream"], stats["meter_events_streamed"]) == (
        1,
        3,
        100,
    )


def test_the_stream_drops_identifiers_it_counted_within_a_day(double, client, stripe_client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    client.billing.meter_events.create(params=usage(ann, "1", "e1"))
    token = stripe_client.v2.billing.meter_event_session.create().authentication_token
    stream(stripe_client, token, [usage(ann, "1", "e1"), usage(ann, "1", "e2"), usage(ann, "1", "e2")])
    stream(stripe_client, token, [usage(ann, "1", "e2"), usage("cus_nobody", "1", "e3")])
    summary = double.meter_events()
    assert (summary["counted"], summary["sums"]) == (2, {"api_calls": {ann: 2}})
    assert [error["reason"] for error in summary["errors"]] == ["meter_event_customer_not_found"]
    assert double.stats()["meter_event_duplicates"] == 3


def test_an_expired_or_unknown_session_is_refused_with_stripes_session_error(double, stripe_client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    token = stripe_client.v2.billing.meter_event_session.create().authentication_token
    double.advance_clock(15 * 60 + 1)
    for key in (token, "sk_test_double"):
        with pytest.raises(stripe.TemporarySessionExpiredError) as refused:
            stream(stripe_client, key, [usage(ann, "1", "e1")])
        assert (refused.value.http_status, refused.value.code) == (401, "billing_meter_event_session_expired")
    assert double.meter_events()["counted"] == 0


def test_the_stream_has_a_rate_limit_of_its_own(double, stripe_client, meters):
    [ann] = double.load([{"email": "ann@x.com"}])
    token = stripe_client.v2.billing.meter_event_session.create().authentication_token
    double.configure(**limits(account_rate=1, meter_event_stream_rate=2))
    stream(stripe_client, token, [usage(ann, "1", "e1")])
    stream(stripe_client, token, [usage(ann, "1", "e2")])
    with pytest.raises(stripe.RateLimitError):
        stream(stripe_client, token, [usage(ann, "1", "e3")])
    assert double.meter_events()["counted"] == 2


def test_a_store_keeps_the_meters_and_meter_events_between_processes(tmp_path):
    store = tmp_path / "catalog.json"
    with StripeDoubleServer(store=store) as server:
        meter = create_meter(server.url)
        [ann] = server.load([{"email": "ann@x.com"}])
        v1 = make_client("sk_test_double", server.url, max_network_retries=0).v1
        v1.billing.meter_events.create(params=usage(ann, "2.5", "e1"))
        v1.billing.meter_events.create(params=usage("cus_nobody", "1", "e2"))
        summary = server.meter_events()
    with StripeDoubleServer(store=store) as server:
        v1 = make_client("sk_test_double", server.url, max_network_retries=0).v1
        assert [(found.id, found.status) for found in v1.billing.meters.list().data] == [(meter, "active")]
        assert server.meter_events() == summary
        assert error_of(lambda: v1.billing.meter_events.create(params=usage(ann, "2.5", "e1")))["code"] == (
            "resource_already_exists"
        )
        v1.billing.meter_event_adjustments.create(
            params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "e1"}}
        )
        assert server.meter_events()["sums"] == {"api_calls": {ann: 0}}


# -- kill points -------------------------------------------------------------------------------


def customer_create(double, index: int) -> None:
    make_client("sk_test_double", double.url, max_network_retries=0).v1.customers.create(
        params={"email": f"held{index}@x.com"}
    )


def meter_event_create(double, index: int) -> None:
    make_client("sk_test_double", double.url, max_network_retries=0).v1.billing.meter_events.create(
        params=usage("cus_elsewhere", "1", f"held{index}")
    )


def meter_event_stream(double, index: int) -> None:
    client = stripe.StripeClient(
        "sk_test_double", base_addresses={"api": double.url, "meter_events": double.url}, max_network_retries=0
    )
    token = client.v2.billing.meter_event_session.create().authentication_token
    stream(client, token, [usage("cus_elsewhere", "1", f"held{index}-{event}") for event in range(10)])


def accepted(double, endpoint: str) -> int:
    return double.stats().get(f"done_{endpoint}", 0)


KILL_POINT_ENDPOINTS = {
    "create": customer_create,
    "meter_event_create": meter_event_create,
    "meter_event_stream": meter_event_stream,
}


@pytest.mark.parametrize("endpoint", KILL_POINT_ENDPOINTS)
@pytest.mark.parametrize("drop_waiting", [False, True], ids=["held served", "held dropped"])
def test_a_pause_accepts_exactly_n_requests_then_holds_the_rest_until_told(double, meters, endpoint, drop_waiting):
    double.configure(meter_customers_elsewhere=True)
    send = KILL_POINT_ENDPOINTS[endpoint]
    double.pause_after(3, endpoint)
    with ThreadPoolExecutor(5) as pool:
        requests = [pool.submit(send, double, index) for index in range(5)]
        state = double.wait_until_paused(waiting=2)
        assert (state["accepted"], state["serving"], state["waiting"]) == (3, 0, 2)
        assert accepted(double, endpoint) == 3
        assert sum(not request.done() for request in requests) >= 2  # the clients of the held requests wait
        double.resume(drop_waiting=drop_waiting)
        failures = [request.exception() for request in requests]
    if drop_waiting:
        assert sum(isinstance(failure, stripe.APIConnectionError) for failure in failures) == 2
        assert (accepted(double, endpoint), double.stats()["dropped_at_pause"]) == (3, 2)
    else:
        assert failures == [None] * 5
        assert accepted(double, endpoint) == 5
    assert not double.pause_state()["armed"]


def test_a_pause_counts_only_accepted_requests_and_holds_only_its_endpoints(double, customers):
    double.configure(invalid_emails="^bad")
    double.pause_after(1, "create")
    with pytest.raises(stripe.InvalidRequestError):
        customers.create(params={"email": "bad@x.com"})  # a 400: not accepted, so not counted
    customers.create(params={"email": "good@x.com"})
    # The double counts a request once its answer is written: the client may read the answer first.
    assert double.wait_until_paused(waiting=0, timeout=30)["accepted"] == 1
    # Other endpoints are served while creates are held.
    assert [c.email for c in customers.list().data] == ["good@x.com"]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(customer_create, double, 1)
        double.wait_until_paused(waiting=1)
        double.reset()  # a reset drops what the pause holds: nothing from before it is served after
        assert isinstance(held.exception(), stripe.APIConnectionError)
    assert double.stats()["customers"] == 0 and not double.pause_state()["armed"]
