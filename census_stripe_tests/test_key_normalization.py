# ruff: noqa: RUF001, RUF003 (the subject here is letters that look alike)
"""One key for one customer, on every warehouse.

A table of golden keys (case in ASCII and beyond it, whitespace of every kind around a key and in
it) is normalized by Python and by the SQL the sync sends, on DuckDB, on PostgreSQL in a database
of each kind of collation (libc `C` and `C.UTF-8`, ICU's root locale and a Turkish one) and on
fakesnow for Snowflake, and every one of them must give the expected key. BigQuery's SQL is
checked as generated: read back and run on DuckDB. Then a listing (and a per-key lookup) of the
Stripe double, whose email filter is exact and case-sensitive as Stripe's is, must find the
customer of every golden email on each of those warehouses, creating none. Random values built
from awkward pieces must agree everywhere too. And a model that spells one email with different
whitespace and case around it makes one key, never two Stripe customers.
"""

import random
import uuid
from dataclasses import dataclass

import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from census_stripe.plan import keys
from census_stripe.plan.planner import Action
from census_stripe.plan.rows import Candidate, rejection_reason
from census_stripe.plan.sql import key_expression
from census_stripe.spec import parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.sync import run_sync
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import API_KEY
from census_stripe_tests.key_warehouses import create_table, open_warehouse
from census_stripe_tests.test_sync_to_stripe import execute, query, stripe_by_email

DIALECTS = ("duckdb", "postgres", "redshift", "snowflake", "bigquery")
KEY_FIELDS = ("email", "metadata.external_id")


@dataclass(frozen=True)
class GoldenKey:
    name: str
    value: str
    email: str | None  # the key of the value as an email: trimmed, ASCII letters lower-cased
    metadata: str | None  # as a metadata value (an external id): trimmed only


GOLDEN_KEYS = [
    GoldenKey("ascii_lower", "ada@example.com", "ada@example.com", "ada@example.com"),
    GoldenKey("ascii_mixed_case", "Ada.Lovelace@Example.COM", "ada.lovelace@example.com", "Ada.Lovelace@Example.COM"),
    # Under a Turkish collation LOWER('I') is a dotless ı.
    GoldenKey("ascii_capital_i", "INFO@IBM.COM", "info@ibm.com", "INFO@IBM.COM"),
    # LOWER gives i (DuckDB, libc), i + a combining dot (ICU), or keeps it (C).
    GoldenKey("dotted_capital_i", "İSTANBUL@Example.TR", "İstanbul@example.tr", "İSTANBUL@Example.TR"),
    GoldenKey("dotless_small_i", "ıŞIK@Example.TR", "ıŞik@example.tr", "ıŞIK@Example.TR"),
    GoldenKey("sharp_s", "Straße@Example.DE", "straße@example.de", "Straße@Example.DE"),
    GoldenKey("capital_sharp_s", "GROẞ@Example.DE", "groẞ@example.de", "GROẞ@Example.DE"),
    GoldenKey("ss_is_not_sharp_s", "STRASSE@Example.DE", "strasse@example.de", "STRASSE@Example.DE"),
    # ICU lower-cases a final capital sigma to ς, others to σ.
    GoldenKey("final_sigma", "ΣΑΣ@Example.GR", "ΣΑΣ@example.gr", "ΣΑΣ@Example.GR"),
    GoldenKey("small_final_sigma", "σας@example.gr", "σας@example.gr", "σας@example.gr"),
    GoldenKey("greek_mixed_case", "Οδυσσεύς@Example.GR", "Οδυσσεύς@example.gr", "Οδυσσεύς@Example.GR"),
    GoldenKey("cyrillic", "ОЛЯ@Пример.РФ", "ОЛЯ@Пример.РФ", "ОЛЯ@Пример.РФ"),
    GoldenKey("full_width_letters", "ＩＲＩＳ@Example.JP", "ＩＲＩＳ@example.jp", "ＩＲＩＳ@Example.JP"),
    GoldenKey("full_width_at", "Iris＠Example.JP", "iris＠example.jp", "Iris＠Example.JP"),
    GoldenKey("kelvin_sign", "\u212aELVIN@Example.com", "\u212aelvin@example.com", "\u212aELVIN@Example.com"),
    GoldenKey("latin_1_capital", "ÉLODIE@Exemple.FR", "Élodie@exemple.fr", "ÉLODIE@Exemple.FR"),
    GoldenKey("combining_accent", "E\u0301LODIE@Exemple.FR", "e\u0301lodie@exemple.fr", "E\u0301LODIE@Exemple.FR"),
    GoldenKey("title_case_digraph", "\u01c5ivko@Example.RS", "\u01c5ivko@example.rs", "\u01c5ivko@Example.RS"),
    # Four bytes in UTF-8: a Deseret capital (LOWER changes it) and an emoji.
    GoldenKey(
        "astral_capital", "\U00010400IRIS@Example.com", "\U00010400iris@example.com", "\U00010400IRIS@Example.com"
    ),
    GoldenKey("emoji", "Iris\U0001f600@Example.com", "iris\U0001f600@example.com", "Iris\U0001f600@Example.com"),
    GoldenKey("nbsp_around", "\u00a0Iris.Nbsp@Example.com\u00a0", "iris.nbsp@example.com", "Iris.Nbsp@Example.com"),
    GoldenKey(
        "zero_width_space_around", "\u200bIris.Zw@Example.com\u200b", "iris.zw@example.com", "Iris.Zw@Example.com"
    ),
    GoldenKey(
        "zero_width_space_inside", "Iris\u200b.In@Example.com", "iris\u200b.in@example.com", "Iris\u200b.In@Example.com"
    ),
    GoldenKey(
        "line_separators_around", "\u2028Iris.Ls@Example.com\u2029", "iris.ls@example.com", "Iris.Ls@Example.com"
    ),
    GoldenKey(
        "tabs_newlines_around", "\t\r\nIris.Tab@Example.com \n\t", "iris.tab@example.com", "Iris.Tab@Example.com"
    ),
    GoldenKey("byte_order_mark", "\ufeffIris.Bom@Example.com", "iris.bom@example.com", "Iris.Bom@Example.com"),
    GoldenKey(
        "ideographic_space_around", "\u3000Iris.Jp@Example.com\u3000", "iris.jp@example.com", "Iris.Jp@Example.com"
    ),
    GoldenKey("next_line_around", "\x85Iris.Nel@Example.com\x85", "iris.nel@example.com", "Iris.Nel@Example.com"),
    # Look like spacing but are not White_Space: kept, at the ends too.
    GoldenKey(
        "word_joiners_kept",
        "\u180eIris.Wj@Example.com\u2060",
        "\u180eiris.wj@example.com\u2060",
        "\u180eIris.Wj@Example.com\u2060",
    ),
    GoldenKey("separators_kept", "\x1fIris@Example.com\x1c", "\x1firis@example.com\x1c", "\x1fIris@Example.com\x1c"),
    GoldenKey("inner_space_kept", "Iris Inner@Example.com", "iris inner@example.com", "Iris Inner@Example.com"),
    GoldenKey("whitespace_only", "\t\u00a0\u200b\u2028 \n", None, None),
    GoldenKey("empty", "", None, None),
]
GOLDEN = {golden.name: golden for golden in GOLDEN_KEYS}

# Characters that look like spacing but are not White_Space: they stay, at the ends too.
NOT_TRIMMED = "\x1c\x1d\x1e\x1f\u180e\u200c\u2060"
LETTERS = [
    *"aAzZiI09@.-+_",
    *"ÉéÄäÖß",
    "\u1e9e",  # ẞ, capital sharp s
    "\u0130",  # İ
    "\u0131",  # dotless i
    *"ΣσςΑΒΓΩ",
    *"ЖЁжё",
    "\uff21\uff5a",  # full-width A and z
    "\u01c4\u01c5\u01c6",  # Ǆ ǅ ǆ: upper, title and lower case of one letter
    "\u212a\u212b",  # Kelvin and Ångström signs
    "\u0301",  # a combining acute accent
    "\U00010400",  # a Deseret capital, four bytes in UTF-8
    " ",  # inner spaces are kept
    "\t",
    "\u3000",
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


RANDOM_VALUES = random_values(3000, seed=20240610)


def key_spec(field: str):
    text = f"model: people\nbehavior: update_or_create\nkey: {{field: {field}, column: value}}\nmapping: {{}}\n"
    return parse_sync_spec(text, "keys.yaml")


def keys_in_sql(warehouse, values: list[str]) -> dict[str, list[str | None]]:
    """The key of every value, per key field, computed by the warehouse in its own dialect."""
    table = create_table(
        warehouse, "keys", f"values_{uuid.uuid4().hex[:8]}", pd.DataFrame({"id": range(len(values)), "value": values})
    )
    value = exp.cast(exp.column(warehouse.model_identifier("value"), quoted=True), "text")
    columns = [
        exp.alias_(keys.key_sql(field, value, warehouse.dialect), f"k{i}", quoted=True)
        for i, field in enumerate(KEY_FIELDS)
    ]
    sql = exp.select(*columns).from_(table.table()).order_by(exp.column(warehouse.model_identifier("id"), quoted=True))
    found = warehouse.query(sql.sql(warehouse.dialect))
    return {field: [None if pd.isna(v) else v for v in found[f"k{i}"]] for i, field in enumerate(KEY_FIELDS)}


@pytest.fixture(scope="module")
def golden_in_sql(key_warehouse) -> dict[str, dict[str, str | None]]:
    found = keys_in_sql(key_warehouse, [golden.value for golden in GOLDEN_KEYS])
    return {field: dict(zip(GOLDEN, found[field], strict=True)) for field in KEY_FIELDS}


@pytest.mark.parametrize("name", GOLDEN)
def test_a_golden_key_in_python(name):
    golden = GOLDEN[name]
    assert keys.normalize_key("email", golden.value) == golden.email
    assert keys.normalize_key("metadata.external_id", golden.value) == golden.metadata


@pytest.mark.parametrize("name", GOLDEN)
def test_a_golden_key_in_the_warehouse(golden_in_sql, name):
    golden = GOLDEN[name]
    assert golden_in_sql["email"][name] == golden.email
    assert golden_in_sql["metadata.external_id"][name] == golden.metadata


def test_the_golden_keys_in_bigquery_sql_read_back_and_run_on_duckdb(tmp_path):
    """No BigQuery here: its SQL, as generated, is read back and run on DuckDB. That checks what
    the text says (the alphabets, every whitespace character surviving BigQuery's escaping)."""
    value = exp.cast(exp.column("value", quoted=True), "text")
    columns = [exp.alias_(keys.key_sql(field, value, "bigquery"), f"k{i}") for i, field in enumerate(KEY_FIELDS)]
    bigquery = exp.select(*columns).from_("golden").order_by("id").sql("bigquery")
    assert "LOWER" not in bigquery.upper().replace("TRANSLATE", "")
    as_duckdb = sqlglot.transpile(bigquery, read="bigquery", write="duckdb")[0]
    with open_warehouse("duckdb", tmp_path) as warehouse:
        warehouse.execute_ddl("CREATE TABLE golden (id integer, value text)")
        golden = pd.DataFrame({"id": range(len(GOLDEN_KEYS)), "value": [g.value for g in GOLDEN_KEYS]})
        warehouse.append_rows(Relation("main", "golden"), golden)
        found = warehouse.query(as_duckdb)
    for golden, email, metadata in zip(GOLDEN_KEYS, found["k0"], found["k1"], strict=True):
        assert (None if pd.isna(email) else email, None if pd.isna(metadata) else metadata) == (
            golden.email,
            golden.metadata,
        ), golden.name


def test_random_values_make_the_same_keys_in_python_and_the_warehouse(key_warehouse):
    in_sql = keys_in_sql(key_warehouse, RANDOM_VALUES)
    for field in KEY_FIELDS:
        for value, computed in zip(RANDOM_VALUES, in_sql[field], strict=True):
            assert computed == keys.normalize_key(field, value), f"{field} key of {value!r}"
    # The values exercise every part of the key: trimming, lower-casing, keys left empty.
    email_keys = [keys.normalize_key("email", value) for value in RANDOM_VALUES]
    assert sum(keys.trim(value) != value for value in RANDOM_VALUES) >= 1000
    assert sum(key not in (None, keys.trim(value)) for value, key in zip(RANDOM_VALUES, email_keys, strict=True)) >= 500
    assert sum(key is None for key in email_keys) >= 100


def test_the_trimmed_characters_are_unicode_white_space_and_two_invisible_ones():
    # Python's isspace() is White_Space plus the separators U+001C to U+001F.
    white_space = {chr(c) for c in range(0x110000) if chr(c).isspace()} - set("\x1c\x1d\x1e\x1f")
    assert set(keys.KEY_WHITESPACE) == white_space | {"\u200b", "\ufeff"}
    assert len(keys.KEY_WHITESPACE) == 27


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_key_sql_renders_in_every_dialect_and_trims_the_same_characters(dialect):
    rendered = key_expression(key_spec("email"), dialect).sql(dialect)
    assert not any(char in rendered for char in "\t\n\r\x0b\x0c"), "a raw control character in the SQL"
    parsed = sqlglot.parse_one(rendered, read=dialect)
    assert parsed.sql(dialect) == rendered
    for trim in parsed.find_all(exp.Trim):
        characters = [
            chr(int(part.expressions[0].name)) if isinstance(part, exp.Chr) else part.name
            for part in trim.expression.find_all(exp.Chr, exp.Literal)
            if not isinstance(part.parent, exp.Chr)
        ]
        assert sorted("".join(characters)) == sorted(keys.KEY_WHITESPACE)
    # Letters are lower-cased by an explicit alphabet, or by a LOWER known to change A to Z only:
    # DuckDB's on ASCII text, PostgreSQL's under the C collation.
    translates, lowers = list(parsed.find_all(exp.Translate)), list(parsed.find_all(exp.Lower))
    for translate in translates:
        assert (translate.args["from_"].name, translate.args["to"].name) == (keys.ASCII_UPPER, keys.ASCII_LOWER)
    if dialect == "postgres":
        assert (len(translates), len(lowers)) == (0, 1)
        assert isinstance(lowers[0].this, exp.Collate) and lowers[0].this.expression.name == "C"
    else:
        assert (len(translates), len(lowers)) == (1, 1 if dialect == "duckdb" else 0)


def test_duckdb_lower_is_the_rule_on_every_ascii_character(tmp_path):
    """DuckDB's key takes LOWER for ASCII text: the same as the alphabet on all 127 characters."""
    ascii_text = "".join(chr(code) for code in range(1, 128))
    with open_warehouse("duckdb", tmp_path) as warehouse:
        [[lowered]] = warehouse.query(f"SELECT LOWER({exp.Literal.string(ascii_text).sql('duckdb')})").values
    assert lowered == ascii_text.translate(str.maketrans(keys.ASCII_UPPER, keys.ASCII_LOWER))


LOOKUP_SPEC = """
model: people
behavior: update_or_create
lookup: {strategy}
key: {{field: email, column: email}}
mapping: {{name: name}}
"""
LOOKUPS = ("list_all", "per_key")


def is_sendable(golden: GoldenKey) -> bool:
    """A golden email a sync would look up: it has a key and is an email."""
    spec = parse_sync_spec(LOOKUP_SPEC.format(strategy="auto"), "people.yaml")
    values = {"email": keys.trim(golden.value), "name": golden.name}
    candidate = Candidate(golden.email, golden.value, values, row_hash="", key_rows=1, prior=None)
    return golden.email is not None and rejection_reason(spec, candidate) is None


SENDABLE = [golden for golden in GOLDEN_KEYS if is_sendable(golden)]


@dataclass(frozen=True)
class LookedUp:
    rows: dict[str, tuple[Action, str | None]]  # golden name -> what the plan did, with which customer
    customers: dict[str, str]  # golden name -> the id of the customer Stripe held for it
    created: int
    customers_after: int


@pytest.fixture(scope="module")
def golden_lookups(key_warehouse, stripe_double_server) -> dict[str, LookedUp]:
    """Per lookup strategy, a first sync of the golden emails into an account that already has
    each of them, spelled as its key (another spelling than the model's wherever case differs).
    The model holds the golden values as written, whitespace and all."""
    rows = pd.DataFrame({"email": [g.value for g in GOLDEN_KEYS], "name": [g.name for g in GOLDEN_KEYS]})
    model = create_table(key_warehouse, "lookup", f"people_{uuid.uuid4().hex[:8]}", rows)
    looked_up = {}
    for strategy in LOOKUPS:
        stripe_double_server.restore()
        ids = stripe_double_server.load([{"email": g.email, "name": g.name} for g in SENDABLE])
        spec = parse_sync_spec(LOOKUP_SPEC.format(strategy=strategy), "people.yaml")
        store = SyncStateStore(key_warehouse, schema=f"state_{strategy}_{uuid.uuid4().hex[:8]}")
        stripe = StripeObjects(API_KEY, stripe_double_server.url)
        report = run_sync(spec, model=model, store=store, stripe=stripe, run_id=f"lookup-{strategy}")
        planned = {row.candidate.key_value: (row.action, row.stripe_id) for row in report.plan.rows}
        looked_up[strategy] = LookedUp(
            rows={g.name: planned[g.value] for g in SENDABLE},
            customers={g.name: customer for g, customer in zip(SENDABLE, ids, strict=True)},
            created=report.counts()["created"],
            customers_after=len(list(StripeObjects(API_KEY, stripe_double_server.url).iter_all())),
        )
    return looked_up


@pytest.mark.parametrize("strategy", LOOKUPS)
@pytest.mark.parametrize("name", [golden.name for golden in SENDABLE])
def test_a_lookup_finds_the_customer_of_a_golden_email(golden_lookups, strategy, name):
    looked_up = golden_lookups[strategy]
    action, customer = looked_up.rows[name]
    assert action in (Action.UPDATE, Action.UNCHANGED), f"{name}: {action.value}"
    assert customer == looked_up.customers[name]


@pytest.mark.parametrize("strategy", LOOKUPS)
def test_looking_the_golden_emails_up_creates_no_customer(golden_lookups, strategy):
    assert len(SENDABLE) >= 25
    looked_up = golden_lookups[strategy]
    assert (looked_up.created, looked_up.customers_after) == (0, len(SENDABLE))


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
