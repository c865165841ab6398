"""The mapping key: how a model row's key value becomes the key it is matched on, in one definition
that the warehouse's SQL (`key_sql`) and Python (`normalize_key`) both follow.

The key is computed in two places: in SQL on every model row (the diff against the state table,
repeated keys, a usage row's customer) and in Python on what Stripe holds (to index listed
customers by key). If the two disagreed, a listing would miss a customer the model has and create
a second one. So the rule uses nothing a database defines its own way. LOWER does: it follows the
collation. PostgreSQL's lower-cases ASCII only under `C`; under ICU it turns `İ` into two
characters and a final `Σ` into `ς`; under a Turkish locale `I` becomes a dotless i (U+0131).

- Trimmed: every Unicode White_Space character, plus the zero-width space and the byte-order mark
  (invisible, and common in pasted or exported data), goes from both ends. Python's bare
  `str.strip()` is not this: it also strips the separators U+001C to U+001F. Inner characters stay.
- Email keys have their ASCII letters A to Z lower-cased (an explicit TRANSLATE in SQL); every
  other character is kept as written: `É`, `İ`, `ß`, `Σ`, the full-width letters. Metadata keys
  (external ids) keep their case.
- A key that is empty once trimmed is no key (NULL in SQL, None in Python).

Earlier versions lower-cased emails with the database's LOWER. A state row filed under that form
is found again by `legacy_key_sql` and filed under today's (plan/sql.py, plan/rows.py).
"""

from __future__ import annotations

import functools

from sqlglot import exp

# The Unicode White_Space property, plus U+200B (zero-width space) and U+FEFF (byte-order mark).
KEY_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\u200b\ufeff"
)


LOWER_CASED_FIELDS = ("email",)
ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"
_LOWER_ASCII = str.maketrans(ASCII_UPPER, ASCII_LOWER)


def trim(value: str) -> str:
    """The value without the key's whitespace at either end; what Stripe is sent for the key."""
    return value.strip(KEY_WHITESPACE)


def normalize_key(field: str, value: str) -> str | None:
    """The key as matched, for a value of Stripe field `field` (SQL's twin: `key_sql`)."""
    key = trim(value)
    if field in LOWER_CASED_FIELDS:
        # For ASCII text str.lower() is the same, and ten times faster than the table.
        key = key.lower() if key.isascii() else key.translate(_LOWER_ASCII)
    return key or None


def _whitespace_sql() -> exp.Expression:
    """KEY_WHITESPACE as an SQL string that renders safely in every supported dialect.

    The ASCII control characters go through CHR(): a raw newline is not allowed in a BigQuery
    string literal, and each dialect escapes them its own way. The others are plain UTF-8 in a
    literal, because Redshift's CHR() knows ASCII only.
    """
    controls = [char for char in KEY_WHITESPACE if char < " "]
    parts: list[exp.Expression] = [exp.Chr(expressions=[exp.Literal.number(ord(char))]) for char in controls]
    parts.append(exp.Literal.string("".join(char for char in KEY_WHITESPACE if char >= " ")))
    return functools.reduce(lambda left, right: exp.DPipe(this=left, expression=right), parts)


def _trim_sql(value: exp.Expression) -> exp.Expression:
    """`trim`, in SQL.

    TRIM with a character set is five times the cost of a plain TRIM in DuckDB (it reads the set
    again for every row), and the key is computed on every model row. Almost no key has whitespace
    at an end, so TRIM runs only for values whose first or last character is in the set.
    """
    whitespace = _whitespace_sql()

    def is_whitespace(end: type[exp.Left] | type[exp.Right]) -> exp.Expression:
        character = end(this=value.copy(), expression=exp.Literal.number(1))
        position = exp.StrPosition(this=whitespace.copy(), substr=character)
        return exp.GT(this=position, expression=exp.Literal.number(0))

    trimmed = exp.Trim(this=value.copy(), expression=whitespace.copy())
    return exp.Case().when(exp.or_(is_whitespace(exp.Left), is_whitespace(exp.Right)), trimmed).else_(value.copy())


def _not_empty(key: exp.Expression) -> exp.Expression:
    return exp.Nullif(this=key, expression=exp.Literal.string(""))


def key_sql(field: str, value: exp.Expression, dialect: str | None = None) -> exp.Expression:
    """The key as matched, for the text expression `value` (Python's twin: `normalize_key`).

    Given the `dialect` it is rendered in, the SQL may take a faster way to the same key.
    """
    if field not in LOWER_CASED_FIELDS:
        return _not_empty(_trim_sql(value))
    upper, lower = exp.Literal.string(ASCII_UPPER), exp.Literal.string(ASCII_LOWER)
    key: exp.Expression = exp.Translate(this=_trim_sql(value), from_=upper, to=lower)
    if dialect == "postgres":
        # Under the C collation, which every PostgreSQL database has, LOWER changes A to Z only:
        # this rule, at a tenth of TRANSLATE's cost (which reads the alphabet for every character).
        key = exp.Lower(this=exp.Collate(this=_trim_sql(value), expression=exp.to_identifier("C", quoted=True)))
    elif dialect == "duckdb":
        # DuckDB's LOWER knows no locale, so on ASCII text it is this rule, and ten times faster
        # than TRANSLATE (which builds its table again for every row). STRLEN counts bytes.
        is_ascii = exp.EQ(this=exp.func("STRLEN", value.copy()), expression=exp.Length(this=value.copy()))
        key = exp.Case().when(is_ascii, exp.Lower(this=_trim_sql(value))).else_(key)
    return _not_empty(key)


def legacy_key_sql(field: str, value: exp.Expression) -> exp.Expression:
    """The key as versions before the explicit rule filed it: an email lower-cased by the database's
    own LOWER. Evaluated on the database that filed a state row, it gives back the row's key."""
    key = _trim_sql(value)
    return _not_empty(exp.Lower(this=key) if field in LOWER_CASED_FIELDS else key)
