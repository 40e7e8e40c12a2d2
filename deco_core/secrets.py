"""The one rule for secrets: which names hold one, and how text and config dicts are redacted.

A name (config key or environment variable) holds a secret when, lower-cased and split on non-alphanumerics,
it contains a marker substring (secret, password, passwd, credential), has "token" as a whole word (HF_TOKEN,
api_token — not num_tokens or TOKENIZERS_PARALLELISM), or ends with a key suffix (api_key, private_key,
access_key, access_key_id). Secret values found in the environment, passwords inside URLs and the values of
secret-named ``name=value`` pairs (query strings, command lines) are masked in any message we log or raise; config
dicts get secret-named values masked as well before they are logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

#: Substrings that mark a name as holding a secret.
SECRET_SUBSTRINGS = ("secret", "password", "passwd", "credential")
#: Whole words (split on non-alphanumerics) that mark a secret: "token" but not "tokens" / "tokenizers".
SECRET_WORDS = ("token",)
#: Name endings that mark a key: api_key, AWS_ACCESS_KEY_ID, ...
SECRET_SUFFIXES = ("api_key", "apikey", "private_key", "access_key", "access_key_id")
#: Secrets shorter than this are not redacted (they would mangle ordinary text); real keys are long.
MIN_SECRET_LEN = 4
MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")
# name=value with a name as config keys, env vars and query parameters spell them (X-Amz-Security-Token=...).
_KEY_VALUE = re.compile(r"(?P<head>(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)=[\"']?)[^\s,;&'\"]+")


def is_secret_name(name: str) -> bool:
    """True for a config key or environment variable name that holds a credential (see the module rule)."""
    low = name.lower()
    words = [w for w in re.split(r"[^a-z0-9]+", low) if w]
    return (any(m in low for m in SECRET_SUBSTRINGS) or any(w in SECRET_WORDS for w in words)
            or "_".join(words).endswith(SECRET_SUFFIXES))


def has_url_password(text: str) -> bool:
    """True when ``text`` holds a URL with a password (``scheme://user:password@host``)."""
    return bool(_URL_PASSWORD.search(text))


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """Values of secret-named environment variables plus ``extra``, longest first (a secret containing another
    is replaced whole); values shorter than MIN_SECRET_LEN are left out."""
    # Names first, then .get(): another thread (MLflow's telemetry) may delete a variable while we read, and
    # os.environ.items() then raises KeyError mid-iteration.
    values = list(extra) + [os.environ.get(name, "") for name in list(os.environ) if is_secret_name(name)]
    return sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Replace secret values from the environment (and ``extra``), URL passwords and the values of secret-named
    ``name=value`` pairs in ``text`` with ***."""
    for value in secret_values(extra):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    return _KEY_VALUE.sub(_mask_pair, text)


def _mask_pair(match: re.Match[str]) -> str:
    return match["head"] + MASK if is_secret_name(match["name"]) else match[0]


def redact_secrets(data: Any, _key: str = "") -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with secret-named keys' values and secret strings masked."""
    if isinstance(data, dict):
        return {k: redact_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v, _key) for v in data]
    if is_secret_name(_key) and data not in (None, "", False):
        return MASK
    if isinstance(data, str):
        return redact(data)
    return data
