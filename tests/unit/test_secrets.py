"""The one secrets rule (deco_core.secrets): config keys, environment names and messages agree."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import pytest

from deco_core import secrets
from deco_core.secrets import MASK, has_url_password, is_secret_name, redact, redact_secrets, secret_values

SECRET_NAMES = [
    "api_key", "openai_api_key", "hub.apikey", "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
    "aws_access_key_id", "password", "db_passwd", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "HF_TOKEN",
    "api_token", "token", "AWS_SESSION_TOKEN", "google_application_credentials", "client_secret", "private_key",
]
PLAIN_NAMES = [
    "num_tokens", "max_new_tokens", "tokenizer", "TOKENIZERS_PARALLELISM", "endpoint_url", "key", "keys",
    "monkey", "region", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "access", "max_tokens_per_batch",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_recognised(name: str) -> None:
    """Config keys and environment names holding credentials are secrets, whatever their case."""
    assert is_secret_name(name)
    assert is_secret_name(name.upper()) and is_secret_name(name.lower())


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names_are_not_secrets(name: str) -> None:
    """Token counts, tokenizers and endpoints are not secrets: 'token' must be a whole word."""
    assert not is_secret_name(name)


def test_config_keys_use_the_same_rule_as_env_names() -> None:
    """Every secret name is masked as a config key too (an api_key cannot escape the config redaction)."""
    data = {name: "value-123456" for name in SECRET_NAMES + PLAIN_NAMES}
    out = redact_secrets({"nested": [data]})["nested"][0]
    assert {k for k, v in out.items() if v == MASK} == set(SECRET_NAMES)
    assert data["api_key"] == "value-123456"  # the input is left untouched


def test_messages_lose_env_secret_values_and_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values of secret env vars and URL passwords are masked in any message; short values are left alone."""
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-live-abcdef")
    monkeypatch.setenv("HF_TOKEN", "abc")  # shorter than MIN_SECRET_LEN: would mangle ordinary text
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    msg = "failed with sk-live-abcdef at https://alice:hunter22@mlflow.example/api; abc; parallelism false"
    out = redact(msg, extra=["extra-secret"])
    assert "sk-live-abcdef" not in out and "hunter22" not in out
    assert "https://alice:***@mlflow.example/api" in out
    assert "; abc;" in out and "false" in out
    assert redact("token extra-secret here", extra=["extra-secret"]) == "token *** here"
    assert has_url_password("s3://u:p@host/b") and not has_url_password("https://mlflow.example:5000/x")


def test_messages_lose_secret_named_key_value_pairs() -> None:
    """name=value pairs (query strings, command lines) with a secret name lose their value; others stay."""
    msg = ("GET https://b.s3.example/x?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Security-Token=FQoGZXIvYXdz "
           "aws_secret_access_key=wJalrXUtnFEMI password=\"hunter22\" num_tokens=5 max_new_tokens=16 region=eu")
    out = redact(msg)
    for secret in ("AKIAEXAMPLE", "FQoGZXIvYXdz", "wJalrXUtnFEMI", "hunter22"):
        assert secret not in out
    assert "X-Amz-Security-Token=***" in out and 'password="***"' in out
    assert "num_tokens=5 max_new_tokens=16 region=eu" in out


def test_nested_config_keys_are_masked_and_numbers_kept() -> None:
    """Deeply nested secret keys are masked whatever their value type; token counts and tokenizers stay."""
    cfg = {"tracking": {"uri": "http://mlflow:5000", "api_key": "k-123456", "auth": {"password": 1234}},
           "model": {"tokenizer": {"path": "gpt2"}, "max_tokens": 64, "num_tokens": 16},
           "storage": {"aws_secret_access_key": "s-abcdef", "token": None}}
    out = redact_secrets(cfg)
    assert out["tracking"] == {"uri": "http://mlflow:5000", "api_key": MASK, "auth": {"password": MASK}}
    assert out["model"] == cfg["model"]
    assert out["storage"] == {"aws_secret_access_key": MASK, "token": None}


class _VanishingEnviron(Mapping):
    """An environment in which one variable is deleted (by another thread) between listing and reading it."""

    def __init__(self, data: dict[str, str], gone: str) -> None:
        self.data, self.gone = data, gone

    def __iter__(self) -> Iterator[str]:
        yield from [*self.data, self.gone]

    def __getitem__(self, name: str) -> str:
        return self.data[name]  # KeyError for the vanished one, as os.environ raises then

    def __len__(self) -> int:
        return len(self.data) + 1


def test_a_variable_deleted_while_reading_the_environment_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = _VanishingEnviron({"MY_API_TOKEN": "tok-0123456789", "HOME": "/root"}, "_TELEMETRY_SESSION_TOKEN")
    monkeypatch.setattr(secrets, "os", SimpleNamespace(environ=environ))
    assert secret_values() == ["tok-0123456789"]
    assert redact("key tok-0123456789 here") == f"key {MASK} here"
