"""Translating between flat sync fields and Stripe's nested parameters."""

from census_stripe.objects import CUSTOMER
from census_stripe.stripe_client.values import dashboard_url


def test_create_params_nest_objects_and_leave_out_empty_values():
    values = {
        "email": "a@b.co",
        "name": None,
        "address.city": "Paris",
        "address.line2": None,
        "shipping.address.city": "Lyon",
        "shipping.name": "A",
        "metadata.plan": "pro",
        "metadata.empty": None,
        "balance": "-500",
    }
    assert CUSTOMER.create_params(values) == {
        "email": "a@b.co",
        "address": {"city": "Paris"},
        "shipping": {"address": {"city": "Lyon"}, "name": "A"},
        "metadata": {"plan": "pro"},
        "balance": -500,
    }


def test_update_params_unset_with_empty_strings_and_clear_empty_objects():
    values = {"name": None, "metadata.plan": None, "address.city": None, "address.line1": None}
    assert CUSTOMER.update_params(values) == {"name": "", "metadata": {"plan": ""}, "address": ""}


def test_update_keeps_an_object_with_content_and_drops_its_empty_parts():
    values = {"address.city": "Paris", "address.line2": None}
    assert CUSTOMER.update_params(values) == {"address": {"city": "Paris"}}


def test_flatten_customer_reads_nested_objects_and_metadata():
    customer = {
        "id": "cus_1",
        "email": "a@b.co",
        "name": "",
        "address": {"city": "Paris", "line1": None},
        "shipping": None,
        "metadata": {"plan": "pro", "gone": ""},
        "sources": {"data": []},
    }
    assert CUSTOMER.flatten(customer) == {
        "email": "a@b.co",
        "name": None,
        "address.city": "Paris",
        "address.line1": None,
        "shipping": None,
        "metadata.plan": "pro",
        "metadata.gone": None,
    }


def test_dashboard_links_follow_the_mode_of_the_key_and_a_local_server_has_none():
    assert dashboard_url("cus_1", "sk_test_x", None) == "https://dashboard.stripe.com/test/customers/cus_1"
    assert dashboard_url("cus_1", "rk_live_x", None) == "https://dashboard.stripe.com/customers/cus_1"
    assert (
        dashboard_url("cus_1", "sk_live_x", "https://api.stripe.com/") == "https://dashboard.stripe.com/customers/cus_1"
    )
    assert dashboard_url("cus_1", "sk_test_x", "http://127.0.0.1:8420/") is None
