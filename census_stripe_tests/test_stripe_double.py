"""The Stripe test double behaves as docs/stripe.md says Stripe does; the tests and
benchmarks that use it rely on that."""

import pytest
import stripe

from census_stripe.stripe_client.client import make_client


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
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError):
        customers.create(params={"email": "b@x.com"}, options={"idempotency_key": "k1"})
    assert double.stats()["customers"] == 1


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
    double.configure(endpoint_rate=2)
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
