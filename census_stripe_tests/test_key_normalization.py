"""One key for one customer: the SQL that keys model rows (on real DuckDB and PostgreSQL) and the
Python that keys Stripe's customers agree on awkward spellings, and a model that spells one email
with different whitespace and case around it makes one key, never two Stripe customers."""

import random

import duckdb
import pandas as pd
import psycopg
import pytest
import sqlglot
from sqlglot import exp

from census_stripe.plan import keys
from census_stripe.plan.sql import key_expression
from census_stripe.spec import parse_sync_spec
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.postgres import PostgresWarehouse
from census_stripe_tests.conftest import require_postgres
from census_stripe_tests.test_sync_to_stripe import execute, query, stripe_by_email

DIALECTS = ("duckdb", "postgres", "redshift", "snowflake", "bigquery")
KEY_FIELDS = ("email", "metadata.external_id")

# Characters that look like spacing but are not White_Space: they stay, at the ends too.
NOT_TRIMMED = "\x1c\x1d\x1e\x1f\u180e\u200c\u2060"
LETTERS = [
    *"aAzZ09@.-+_",
    *"ÉéÄäÖß",
    "\u1e9e",  # ẞ, capital sharp s: lowers to ß, never to "ss"
    "\u0130",  # İ: lowers to plain i in the warehouses
    "\u0131",  # dotless i
    *"ΣσςΑΒΓΩ",  # a final capital sigma still lowers to the plain small sigma
    *"ЖЁжё",
    "\uff21\uff5a",  # full-width A and z
    "\u01c4\u01c5\u01c6",  # Ǆ ǅ ǆ: upper, title and lower case of one letter
    "\u212a\u212b",  # Kelvin and Ångström signs: lower to k and å
    "\u0301",  # a combining acute accent
    " ",  # inner spaces are kept
    "\t",
    "\u3000",
]
FIXED_VALUES = [
    "a@x.com",
    "a@x.com\t",
    "\u00a0A@X.com\n",
    "  Ada@Example.com\t",
    "\r\nAda@Example.com\x0b\x0c",
    "\ufeffbom@example.com\u200b",
    "\u3000ideographic@example.com\u3000",
    "\u2028\u2029\u0085\u1680\u202f\u205f\u2000\u200a edges@example.com",
    "Straße@Example.de",
    "STRASSE@EXAMPLE.DE",
    "\u1e9e@x.de",
    "\u0130stanbul@X.tr",
    "\u0131i@x.tr",
    "ΟΔΥΣΣΕΥΣ@x.gr",
    "ОЛЯ@Пример.рф",
    "\uff21\uff22\uff23@x.jp",
    "Cafe\u0301@X.fr",
    "Café@X.fr",
    "inner  space@x.com",
    "\x1cseparators stay\x1f",
    "ID-Ä-001 ",
    "",
    " ",
    "\t\n\r\x0b\x0c",
    "\u00a0\u3000\u200b\ufeff",
    None,
]


def random_values(count: int, seed: int) -> list[str]:
    """Values built from awkward pieces: whitespace (trimmed or not) at both ends and anywhere, and
    letters whose case mappings differ between definitions, plus any code point at all."""
    rng = random.Random(seed)
    at_ends = keys.KEY_WHITESPACE + NOT_TRIMMED

    def any_code_point() -> str:
        while True:
            # Not NUL, which PostgreSQL text cannot hold, nor a lone surrogate, which is not text.
            code_point = rng.randrange(1, 0x110000)
            if not 0xD800 <= code_point <= 0xDFFF:
                return chr(code_point)

    def piece() -> str:
        return any_code_point() if rng.random() < 0.1 else rng.choice(LETTERS)

    def edge() -> str:
        return "".join(rng.choice(at_ends) for _ in range(rng.randrange(4)))

    return [edge() + "".join(piece() for _ in range(rng.randrange(7))) + edge() for _ in range(count)]


VALUES = FIXED_VALUES + random_values(3000, seed=20240610)


def key_spec(field: str):
    text = f"model: people\nbehavior: update_or_create\nkey: {{field: {field}, column: value}}\nmapping: {{}}\n"
    return parse_sync_spec(text, "keys.yaml")


def keys_in_sql(warehouse, table: str) -> dict[str, list[str | None]]:
    """The key of every value, per key field, computed by the warehouse in its own dialect."""
    columns = [
        exp.alias_(key_expression(key_spec(field)), field.replace(".", "_"), quoted=True) for field in KEY_FIELDS
    ]
    sql = exp.select(*columns).from_(table).order_by("id").sql(warehouse.dialect)
    found = warehouse.query(sql)
    return {field: [None if pd.isna(v) else v for v in found[field.replace(".", "_")]] for field in KEY_FIELDS}


def keys_in_python() -> dict[str, list[str | None]]:
    return {field: [None if v is None else keys.normalize_key(field, v) for v in VALUES] for field in KEY_FIELDS}


def test_the_trimmed_characters_are_unicode_white_space_and_two_invisible_ones():
    # Python's isspace() is White_Space plus the separators U+001C to U+001F.
    white_space = {chr(c) for c in range(0x110000) if chr(c).isspace()} - set("\x1c\x1d\x1e\x1f")
    assert set(keys.KEY_WHITESPACE) == white_space | {"\u200b", "\ufeff"}
    assert len(keys.KEY_WHITESPACE) == 27


@pytest.mark.parametrize(
    ("value", "email_key", "metadata_key"),
    [
        ("  Ada@Example.com\t", "ada@example.com", "Ada@Example.com"),
        ("\u00a0A@X.com\n", "a@x.com", "A@X.com"),
        ("\ufeff\u200bA b\u3000", "a b", "A b"),
        ("ΟΔΥΣΣΕΥΣ", "οδυσσευσ", "ΟΔΥΣΣΕΥΣ"),  # not the context-sensitive final ς
        ("\u0130", "i", "\u0130"),  # one character, not i + combining dot
        ("Straße", "straße", "Straße"),  # not case-folded to "strasse"
        ("\u1e9e", "ß", "\u1e9e"),
        ("\x1cA\x1f", "\x1ca\x1f", "\x1cA\x1f"),
        ("\t\u3000\u200b\ufeff\r\n", None, None),
    ],
)
def test_the_key_in_python(value, email_key, metadata_key):
    assert keys.normalize_key("email", value) == email_key
    assert keys.normalize_key("metadata.external_id", value) == metadata_key


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_key_sql_renders_in_every_dialect_and_trims_the_same_characters(dialect):
    rendered = key_expression(key_spec("email")).sql(dialect)
    assert not any(char in rendered for char in "\t\n\r\x0b\x0c"), "a raw control character in the SQL"
    parsed = sqlglot.parse_one(rendered, read=dialect)
    assert parsed.sql(dialect) == rendered
    [trim] = parsed.find_all(exp.Trim)
    characters = [
        chr(int(part.expressions[0].name)) if isinstance(part, exp.Chr) else part.name
        for part in trim.expression.find_all(exp.Chr, exp.Literal)
        if not isinstance(part.parent, exp.Chr)
    ]
    assert sorted("".join(characters)) == sorted(keys.KEY_WHITESPACE)


def test_duckdb_postgres_and_python_make_the_same_keys(tmp_path):
    require_postgres()
    in_python = keys_in_python()
    rows = list(enumerate(VALUES))

    with duckdb.connect(str(tmp_path / "keys.duckdb")) as connection:
        connection.execute("create table key_values (id integer, value varchar)")
        connection.executemany("insert into key_values values (?, ?)", rows)
        in_duckdb = keys_in_sql(DuckDBWarehouse(connection), "key_values")

    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test") as connection:
        warehouse = PostgresWarehouse(connection)
        connection.execute("create temp table key_values (id integer, value text)")
        with connection.cursor() as cursor:
            cursor.executemany("insert into key_values values (%s, %s)", rows)
        in_postgres = keys_in_sql(warehouse, "key_values")

    for field in KEY_FIELDS:
        computed = zip(VALUES, in_python[field], in_duckdb[field], in_postgres[field], strict=True)
        for value, python, duck, postgres in computed:
            assert python == duck == postgres, f"{field} key of {value!r}: {python!r} {duck!r} {postgres!r}"
    # The values exercise every part of the key: trimming, lower-casing, keys left empty.
    written = [(value, key) for value, key in zip(VALUES, in_python["email"], strict=True) if value is not None]
    assert sum(keys.trim(value) != value for value, _ in written) >= 1000
    assert sum(key not in (None, keys.trim(value)) for value, key in written) >= 1000
    assert sum(key is None for _, key in written) >= 100


def only_model_rows(warehouse_path, *emails: str) -> None:
    """Make the demo model hold one row per email, each a copy of a valid demo customer."""
    copies = " union all ".join(
        f"select * replace ('{email}' as email, 'usr_key_{i}' as external_id) "
        "from main.stripe_customers where external_id = 'usr_000001'"
        for i, email in enumerate(emails)
    )
    execute(warehouse_path, f"create or replace table main.stripe_customers as {copies}")


def test_one_email_spelled_with_different_whitespace_and_case_is_one_duplicated_key(
    sync_runner, stripe_customers, warehouse_path
):
    spellings = ["a@x.com", "a@x.com\t", "\u00a0A@X.com\n"]
    only_model_rows(warehouse_path, *spellings)
    runner = sync_runner()
    result = runner.run()
    rejected = {r.data["key"]: r.data["reason"] for r in runner.metadata(result)["rejected_rows"].records}
    assert rejected == {spelling: "duplicate key: 3 model rows share email 'a@x.com'" for spelling in spellings}
    counts = runner.counts(result)
    assert (counts["created"], counts["rejected"]) == (0, 3)
    assert stripe_by_email(stripe_customers) == {}


def test_an_email_with_whitespace_around_it_is_created_trimmed_and_matched_again(
    sync_runner, stripe_customers, warehouse_path
):
    only_model_rows(warehouse_path, "  Ada@Example.com\t")
    runner = sync_runner()
    assert runner.counts(runner.run())["created"] == 1
    [customer] = stripe_by_email(stripe_customers).values()
    assert customer["email"] == "Ada@Example.com"

    rerun = runner.counts(runner.run())
    assert (rerun["created"], rerun["updated"], rerun["unchanged"], rerun["stripe_api_calls"]) == (0, 0, 1, 0)

    # Without the state table the row is looked up in Stripe, whose copy has no whitespace left.
    execute(warehouse_path, "delete from census_stripe.sync_state")
    found_again = runner.counts(runner.run())
    assert (found_again["created"], found_again["updated"], found_again["unchanged"]) == (0, 0, 1)
    assert list(stripe_by_email(stripe_customers)) == ["Ada@Example.com"]
    state = query(warehouse_path, "select customer_key, stripe_customer_id from census_stripe.sync_state")
    assert state == [("ada@example.com", customer["id"])]
