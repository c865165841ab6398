"""The mapping key: how a model row's key value becomes the key it is matched on, in one definition
that the warehouse's SQL (`key_sql`) and Python (`normalize_key`) both follow.

The key is computed in two places: in SQL on every model row (the diff against the state table,
repeated keys) and in Python on what Stripe holds (to index listed customers by key). If the two
disagreed, one customer could be two keys, and two keys two customers with one email. So:

- Trimmed: every Unicode White_Space character, plus the zero-width space and the byte-order mark
  (invisible, and common in pasted or exported data), goes from both ends. Python's bare
  `str.strip()` is not this: it also strips the separators U+001C to U+001F. Inner characters stay.
- Email keys are lower-cased one character at a time, to that character's single lower-case
  letter (Unicode's simple mapping). That is what DuckDB's and PostgreSQL's LOWER do, measured on
  every code point (PostgreSQL with a libc collation such as C.UTF-8). It is neither case folding,
  which would merge distinct addresses (`ß` and `ss`), nor Python's `str.lower()`, which reads
  context (a final `Σ` becomes `ς`) and turns `İ` into two characters where the warehouses give `i`.
  Snowflake's and BigQuery's LOWER could not be run here. Metadata keys (external ids) keep their case.
- A key that is empty once trimmed is no key (NULL in SQL, None in Python).
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


class _SimpleLowerCase(dict):
    """A `str.translate` table: code point -> its one-character lower case.

    Filled in as characters are met, since building it for all 1.1M code points up front costs a
    noticeable fraction of a second at import. Python's own lower case of a single character is the
    simple mapping for every character but U+0130 `İ`, whose full lower case is `i` + a combining
    dot; its simple mapping, and the warehouses' LOWER, give plain `i`.
    """

    def __missing__(self, code_point: int) -> str:
        self[code_point] = lower = chr(code_point).lower()
        return lower


_LOWER_CASE = _SimpleLowerCase({ord("\u0130"): "i"})


def trim(value: str) -> str:
    """The value without the key's whitespace at either end; what Stripe is sent for the key."""
    return value.strip(KEY_WHITESPACE)


def normalize_key(field: str, value: str) -> str | None:
    """The key as matched, for a value of Stripe field `field` (SQL's twin: `key_sql`)."""
    key = trim(value)
    if field == "email":
        # ASCII's lower case is the same either way, and str.lower() is ten times faster than the table.
        key = key.lower() if key.isascii() else key.translate(_LOWER_CASE)
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


def key_sql(field: str, value: exp.Expression) -> exp.Expression:
    """The key as matched, for the text expression `value` (Python's twin: `normalize_key`)."""
    key = _trim_sql(value)
    if field == "email":
        key = exp.Lower(this=key)
    return exp.Nullif(this=key, expression=exp.Literal.string(""))
