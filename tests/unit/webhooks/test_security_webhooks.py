"""Security of the webhook pieces that need no database: channel tokens, the secret's secrecy, the
allow-list's parsing, and the connection form and emulator helpers that carry both."""

from __future__ import annotations

import json
import pickle
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider import get_provider_info
from fal_provider.emulator.testing import FalEmulator, emulator_webhook_extra, run_emulator
from fal_provider.emulator.webhooks import sign_webhook
from fal_provider.webhooks.settings import ReceiverSettings, parse_user_ids
from fal_provider.webhooks.urls import WebhookSecret, WebhookUrlError, build_webhook_url

BODY = b'{"request_id":"req-1","status":"OK","payload":{}}'
SECRET = "a-deployment-secret-of-32-chars!"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(body: bytes = BODY) -> dict[str, str]:
    """Fresh, well-formed headers signed by a key no JWKS publishes."""
    return sign_webhook(body, "req-1", Ed25519PrivateKey.generate(), user_id="emulator-user")


# -- channel tokens and the secret ---------------------------------------------------------------


def test_channel_url_needs_the_secret_and_carries_an_hmac_token() -> None:
    with pytest.raises(WebhookUrlError, match="webhook_secret"):
        build_webhook_url("https://airflow.example.com", channel="batch")
    secret = WebhookSecret(SECRET)
    query = parse_qs(urlsplit(build_webhook_url("https://a.example", channel="batch", secret=secret)).query)
    token = query["token"][0]
    assert len(token) == 64 and secret.token_matches("batch", token)
    assert not secret.token_matches("other", token), "a token must not open another channel"
    assert not WebhookSecret(SECRET[::-1]).token_matches("batch", token), "tokens are per secret"
    assert not secret.token_matches("batch", None) and not secret.token_matches("batch", token[:-1])


def test_secret_never_shows_in_reprs_logs_or_pickles() -> None:
    secret = WebhookSecret(SECRET)
    settings = ReceiverSettings(webhook_secret=secret, allowed_user_ids=frozenset({"u"}))
    for text in (repr(secret), str(secret), repr(settings), f"{settings}"):
        assert SECRET not in text
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@pytest.mark.parametrize("value", ["short", "   short-secret   ", 12345])
def test_unusable_secret_is_refused_without_echoing_it(value: object) -> None:
    with pytest.raises(WebhookUrlError, match="at least 16 characters") as err:
        WebhookSecret.from_config(value)
    assert str(value).strip() not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("user-a, user-b ,", {"user-a", "user-b"}),
        ('["user-a", "user-b"]', {"user-a", "user-b"}),
        (["user-a"], {"user-a"}),
        (None, set()),
        ("", set()),
    ],
)
def test_allow_list_accepts_comma_separated_or_json(raw: object, expected: set[str]) -> None:
    assert parse_user_ids(raw) == expected


@pytest.mark.parametrize("raw", ['["a", 1]', "[not json", 42])
def test_garbled_allow_list_is_an_error_not_an_empty_list(raw: object) -> None:
    with pytest.raises(ValueError, match="webhook_allowed_user_ids"):
        parse_user_ids(raw)


# -- the connection form and the emulator's connection helpers -----------------------------------


def test_connection_form_offers_the_allow_list_and_a_masked_secret() -> None:
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert "webhook_allowed_user_ids" in fields
    assert fields["webhook_secret"]["schema"]["format"] == "password"


def test_emulator_connection_allow_lists_its_user_id_and_carries_a_secret() -> None:
    with run_emulator(user_id="emu-account-7") as emulator:
        extra = json.loads(emulator.connection_json())["extra"]
    assert parse_user_ids(extra["webhook_allowed_user_ids"]) == {"emu-account-7"}
    assert WebhookSecret.from_config(extra["webhook_secret"]) is not None
    assert extra["webhook_secret"] == emulator.webhook_secret
    assert FalEmulator().webhook_secret != emulator.webhook_secret, "a fresh secret per emulator"
    assert emulator_webhook_extra("x", SECRET) == {"webhook_allowed_user_ids": "x", "webhook_secret": SECRET}
