"""The errors the Stripe client raises, and the key hygiene behind their messages: a key that
cannot work is refused before any request, and no message ever holds the key. Free of the SDK,
so that code which only catches these errors does not import it."""

from __future__ import annotations

import functools
import json
import re
import string
import unicodedata
from urllib.parse import quote, quote_plus


class StripeAccessError(RuntimeError):
    """Stripe refused the API key itself (401, 403): no row can succeed. The key is redacted."""

    def __init__(self, message: str, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class MalformedKeyError(StripeAccessError):
    """The API key cannot be a usable Stripe key; refused before any request. The message never quotes it."""


class StripeRequestError(RuntimeError):
    """Stripe refused a request for good, or it failed after every retry; the key is redacted.

    Errors of the SDK never leave this module: they may quote the request's `Authorization` header.
    """

    def __init__(self, message: str, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class StripeUnreachableError(RuntimeError):
    """Stripe did not answer, or answered 5xx, too many times in a row: the run stops at once
    instead of retrying every row to exhaustion. The key is redacted."""


class StripeAccountMismatchError(RuntimeError):
    """Two syncs that must write to one Stripe account reach two: the run stops before any write."""


KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_")
_CHARACTER_NAMES = {
    "\n": "a newline",
    "\r": "a carriage return",
    "\t": "a tab",
    " ": "a space",
    "\0": "a NUL character",
}


def _character_name(character: str) -> str:
    """A character named, never shown: it may be invisible, and is part of the key."""
    named = _CHARACTER_NAMES.get(character)
    return named or f"U+{ord(character):04X} {unicodedata.name(character, '')}".rstrip()


def check_api_key(api_key: str) -> None:
    """Refuse, before any request, a key that cannot work: a stray newline or space from how the
    variable was set would otherwise reach the SDK, whose errors quote the header that holds it."""
    if not api_key:
        raise MalformedKeyError("STRIPE_API_KEY is empty: check how the variable is set")
    for position, character in enumerate(api_key, start=1):
        if character not in KEY_CHARACTERS:
            raise MalformedKeyError(
                f"STRIPE_API_KEY contains {_character_name(character)} (character {position} of {len(api_key)}); "
                "Stripe keys are a single line of letters, digits and underscores: check how the variable is set"
            )
    if api_key.startswith("pk_"):
        raise MalformedKeyError(
            "STRIPE_API_KEY is a publishable key (pk_...), which cannot write customers; "
            "use a secret (sk_...) or restricted (rk_...) key"
        )
    if not api_key.startswith(KEY_PREFIXES) or api_key in KEY_PREFIXES:
        raise MalformedKeyError(
            "STRIPE_API_KEY does not look like a Stripe key: Stripe keys start with "
            f"{', '.join(KEY_PREFIXES)}, followed by letters, digits and underscores"
        )


# Parts of a key shorter than this are not redacted on their own: too common to blank out of a
# message, too short to be of use. Stripe's own key bodies are about 100 characters.
MIN_REDACTED_PART = 12


def _written_forms(text: str) -> set[str]:
    """How a string shows up in an error message: as is, as Python, JSON or a URL escape it."""
    url_forms = {quote(text, safe=""), quote_plus(text, safe="")}
    return {
        text,
        repr(text)[1:-1],
        repr(text.encode())[2:-1],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        *url_forms,
        *(re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), form) for form in url_forms),
    }


@functools.lru_cache(maxsize=8)
def _secret_pattern(secret: str) -> re.Pattern | None:
    """Every form of the secret worth finding in a text, longest first so that no tail survives."""
    stripped = secret.strip()
    body = re.sub(r"^[a-z]+_(test|live)_", "", stripped)
    parts = {secret, stripped}
    for text in (stripped, body):
        cleaned = "".join(c for c in text if c in KEY_CHARACTERS)
        pieces = re.split(r"[^A-Za-z0-9_]+", text)
        parts |= {part for part in (text, cleaned, *pieces) if len(part) >= MIN_REDACTED_PART}
    forms = set().union(*map(_written_forms, parts)) - {""}
    if not forms:
        return None
    return re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))


def redact(text: str, secret: str) -> str:
    """`text` with the secret removed, also escaped, stripped of whitespace or without its prefix."""
    pattern = _secret_pattern(secret) if secret else None
    return pattern.sub("[redacted]", text) if pattern else text
