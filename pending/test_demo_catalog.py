"""To join census_stripe_tests/test_demo.py once pending/products and pending/prices are in
census_stripe/defs/ (it uses that file's run_demo and counts). The count names `archived` and the
preview's wording are the issue's; adjust them to the engine's if they differ."""

import json

from census_stripe_tests.test_demo import counts, run_demo


def test_the_demo_creates_the_catalog_then_makes_one_new_price_version_then_nothing(tmp_path):
    first = run_demo(tmp_path)
    products, prices = counts(first, "products"), counts(first, "prices")
    assert (products["created"], products["rejected"]) == (4, 0)
    assert (prices["created"], prices["rejected"]) == (14, 1)
    assert "rejected 'sso_monthly_usd'" in first and "prod_demo_sso" in first  # the price of a missing product
    assert counts(first)["created"] == 294  # the customers, on localstripe, as before

    second = run_demo(tmp_path)
    assert "this run raises pro_monthly_usd from 10.00 to 12.00 USD" in second
    assert counts(second)["stripe_api_calls"] == 0  # no customer changed
    assert counts(second, "products")["stripe_api_calls"] == 0
    prices = counts(second, "prices")
    assert (prices["created"], prices["archived"], prices["updated"]) == (1, 1, 0)
    assert "'pro_monthly_usd': new version of price pro_monthly_usd: 1000 → 1200 USD/month" in second

    stored = json.loads((tmp_path / "stripe_catalog.json").read_text())
    versions = [p for p in stored["prices"] if p["product"] == "prod_demo_pro" and p["currency"] == "usd"]
    monthly = [p for p in versions if p["recurring"]["interval"] == "month"]
    assert sorted((p["unit_amount"], p["active"], p["lookup_key"]) for p in monthly) == [
        (1000, False, None),  # archived, its lookup key moved to the new version
        (1200, True, "pro_monthly_usd"),
    ]

    third = run_demo(tmp_path)
    for sync in ("customers", "products", "prices"):
        assert counts(third, sync)["stripe_api_calls"] == 0, sync
