"""The Stripe key comes from the environment and is never written anywhere: not in logs, metadata,
exceptions or the event log, also when Stripe refuses it."""

import json
import logging
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import stripe
from dagster_duckdb import DuckDBResource

from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import build_sync_asset, load_sync
from census_stripe.orchestration.warehouses import DuckDBWarehouseResource
from census_stripe.settings import PROJECT_ROOT
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.errors import (
    MalformedKeyError,
    StripeAccessError,
    StripeRequestError,
    StripeUnreachableError,
    redact,
)
from census_stripe_tests.conftest import DEMO_SYNC, MATERIALIZE_DEMO_SYNC, dagster_process_env


def materialize_with_key_from_env(monkeypatch, key: str, warehouse_path: Path, stripe_url: str, instance):
    monkeypatch.setenv("STRIPE_API_KEY", key)
    return dg.materialize(
        [build_sync_asset(load_sync(DEMO_SYNC), "duckdb")],
        resources={
            "stripe": StripeResource(api_key=dg.EnvVar("STRIPE_API_KEY"), api_base=stripe_url),
            "warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(warehouse_path))),
        },
        instance=instance,
        raise_on_error=False,
    )


def everything_recorded(instance: dg.DagsterInstance, run_id: str, root: Path) -> str:
    """The event log as stored, plus every file the instance wrote (runs, events, captured logs)."""
    events = "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))
    files = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())
    return events + files


def test_key_never_recorded_on_success(monkeypatch, warehouse_path, stripe_url, tmp_path, caplog):
    key = "sk_test_CANARYsuccess0123456789"
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize_with_key_from_env(monkeypatch, key, warehouse_path, stripe_url, instance)
        assert result.success
        recorded = everything_recorded(instance, result.run_id, tmp_path)
    assert "ASSET_MATERIALIZATION" in recorded  # the sweep did read the event log
    assert key not in recorded
    assert key not in caplog.text


def failed_run_with_key(monkeypatch, key: str, warehouse_path: Path, stripe_url: str, tmp_path: Path):
    """A materialization with this key in STRIPE_API_KEY, which must fail: its error, and
    everything its instance recorded."""
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize_with_key_from_env(monkeypatch, key, warehouse_path, stripe_url, instance)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        return failure, everything_recorded(instance, result.run_id, tmp_path)


def test_key_never_recorded_when_stripe_refuses_it(monkeypatch, warehouse_path, stripe_url, tmp_path, caplog):
    # localstripe, like Stripe, answers 401 to a key it does not accept.
    key = "rk_test_CANARYrefused0123456789"
    caplog.set_level(logging.DEBUG)
    failure, recorded = failed_run_with_key(monkeypatch, key, warehouse_path, stripe_url, tmp_path)
    assert failure.cause.message.startswith(
        "census_stripe.stripe_client.errors.StripeAccessError: AuthenticationError (HTTP 401): Unauthorized"
    )
    assert key not in recorded
    assert key not in caplog.text


# Keys as a variable set carelessly holds them: each body is recognisable, so that a leak of any
# part of it shows. An environment variable cannot hold NUL, so that key is only tested directly.
HOSTILE_KEYS = {
    "trailing newline": ("sk_test_CANARYnewline0123456789\n", "a newline (character 32 of 32)"),
    "leading space": (" sk_test_CANARYspace0123456789", "a space (character 1 of 30)"),
    "embedded tab": ("sk_test_CANARYtabbed01\tCANARYtabbed23", "a tab (character 23 of 37)"),
    "CRLF": ("sk_test_CANARYcrlf0123456789\r\n", "a carriage return (character 29 of 30)"),
    "zero-width space": ("sk_test_CANARYzerowidth01\u200bCANARYzerowidth23", "U+200B ZERO WIDTH SPACE"),
    "non-breaking space": ("sk_test_CANARYnbsp012345\u00a0CANARYnbsp678901", "U+00A0 NO-BREAK SPACE"),
    "quote": ('sk_test_CANARYquote012345"CANARYquote678901', "U+0022 QUOTATION MARK"),
}


def secret_forms(key: str) -> set[str]:
    """Every part of the key's body, and the key, as they could be written: raw, as Python or JSON
    escape them, URL-encoded."""
    body = key.strip().removeprefix("sk_test_")
    parts = {key, key.strip(), body, *re.split(r"[^A-Za-z0-9_]+", body)} - {""}
    forms = set()
    for part in parts:
        forms |= {part, repr(part)[1:-1], repr(part.encode())[2:-1], json.dumps(part)[1:-1], quote(part, safe="")}
    return forms


def leaks(key: str, *texts: str, root: Path | None = None) -> set[str]:
    """The forms of the key found in the texts or in any file under `root`, read as bytes."""
    blobs = [text.encode("utf-8", "replace") for text in texts]
    if root is not None:
        blobs += [path.read_bytes() for path in root.rglob("*") if path.is_file()]
    return {form for form in secret_forms(key) if any(form.encode() in blob for blob in blobs)}


@pytest.mark.parametrize("key, named", HOSTILE_KEYS.values(), ids=HOSTILE_KEYS.keys())
def test_a_hostile_key_is_refused_before_any_call_and_never_recorded(
    key, named, monkeypatch, warehouse_path, double, tmp_path, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    failure, recorded = failed_run_with_key(monkeypatch, key, warehouse_path, double.url, tmp_path)
    refusal = f"census_stripe.stripe_client.errors.MalformedKeyError: STRIPE_API_KEY contains {named}"
    assert failure.cause.message.startswith(refusal)
    # Before any call: Stripe (the double, which counts every API request by key and by endpoint) saw none.
    assert [name for name in double.stats() if name.startswith(("key_sha256_", "requests_"))] == []
    assert "STEP_FAILURE" in recorded  # the sweep did read the event log
    captured = capfd.readouterr()
    assert leaks(key, recorded, caplog.text, captured.out, captured.err, root=tmp_path) == set()


def test_a_key_with_nul_is_refused_without_quoting_it():
    key = "sk_test_CANARYnul0123456789\x00CANARYnul0123456789"
    with pytest.raises(MalformedKeyError) as raised:
        StripeObjects(key, "http://127.0.0.1:9")
    assert str(raised.value).startswith("STRIPE_API_KEY contains a NUL character (character 28 of 47);")
    assert leaks(key, str(raised.value)) == set()


@pytest.mark.parametrize(
    "key, message",
    [
        ("", "STRIPE_API_KEY is empty"),
        ("pk_test_CANARYpublishable0123", "STRIPE_API_KEY is a publishable key (pk_...)"),
        ("ghp_CANARYnotstripe0123456789", "STRIPE_API_KEY does not look like a Stripe key"),
        ("sk_test_CANARYcontrol\x1b0123456789", "STRIPE_API_KEY contains U+001B (character 22 of 32)"),
    ],
)
def test_a_key_that_cannot_be_a_stripe_key_is_refused(key, message):
    with pytest.raises(MalformedKeyError) as raised:
        StripeResource(api_key=key).objects()
    assert str(raised.value).startswith(message)
    assert leaks(key, str(raised.value)) == set()


def test_a_hostile_key_through_the_dagster_cli_is_never_written(warehouse_path, stripe_url, tmp_path):
    key = "sk_test_CANARYcli0123456789\n"
    env = dagster_process_env(tmp_path, warehouse_path, stripe_url, api_key=key)
    completed = subprocess.run(
        MATERIALIZE_DEMO_SYNC, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode != 0
    assert "STRIPE_API_KEY contains a newline (character 28 of 28)" in completed.stderr
    assert leaks(key, completed.stdout, completed.stderr, root=tmp_path) == set()


def test_redact_finds_the_key_however_it_is_written():
    key = "sk_test_CANARYredact01\tCANARYredact23\n"
    written = [
        f"Invalid header value: 'Bearer {key!r}'",  # Python's repr, as the SDK quotes a header
        repr(key.encode()),
        json.dumps({"authorization": key}),
        f"https://example.test/?key={quote(key)}",
        f"https://example.test/?key={quote(key).replace('%0A', '%0a')}",
        f"key {key.strip()} stripped",
        "key body CANARYredact01\tCANARYredact23 without its prefix",
        "key pieces CANARYredact01 and CANARYredact23",
    ]
    for text in written:
        redacted = redact(text, key)
        assert "[redacted]" in redacted
        assert leaks(key, redacted) == set(), redacted


def test_redact_leaves_other_text_alone():
    assert redact("Connection refused (HTTP 500)", "sk_test_CANARYother0123456789") == "Connection refused (HTTP 500)"
    # A body too short to be a real key's is only redacted as the whole key.
    assert redact("x marks sk_test_x", "sk_test_x") == "x marks [redacted]"


def test_no_sdk_error_leaves_the_stripe_layer(double, unreachable_url):
    double.configure(read_only_keys=["rk_test_CANARYreadonly0123456789"])
    customers = StripeObjects("sk_test_CANARYsdkerrors0123456789", double.url)
    with pytest.raises(StripeRequestError) as not_found:
        customers.update("cus_missing", {"name": "A"}, "census-stripe-test")
    assert not_found.value.http_status == 404
    read_only = StripeObjects("rk_test_CANARYreadonly0123456789", double.url)
    with pytest.raises(StripeAccessError) as refused:
        read_only.check_write_access()
    dead = unreachable_url
    with pytest.raises(StripeRequestError) as unanswered:
        StripeObjects("sk_test_CANARYsdkerrors0123456789", dead, max_attempts=2).create({}, "census-stripe-test")
    with pytest.raises(StripeUnreachableError) as unreachable:
        StripeObjects("sk_test_CANARYsdkerrors0123456789", dead, unreachable_after=1).create({}, "census-test")
    for raised in (not_found, refused, unanswered, unreachable):
        # Nothing chained: the SDK's error, which may quote the request's headers, is gone.
        assert raised.value.__cause__ is None and raised.value.__context__ is None
        assert not isinstance(raised.value, stripe.StripeError)
