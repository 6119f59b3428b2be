"""The enrollment throttle counts per client address in the shared cache, and trusts
X-Forwarded-For only from as many proxies as ``FEDHEALTH_TRUSTED_PROXY_COUNT`` says (docs/api.md)."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ENROLL = "/api/agent/v1/enroll"
RATE = 30  # settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["enroll"]: 30/minute


def statuses_of_guesses(headers_of: list[dict[str, str]]) -> list[int]:
    client = APIClient()
    return [
        client.post(ENROLL, {"token": f"guess-{number}"}, format="json", **headers).status_code
        for number, headers in enumerate(headers_of)
    ]


def test_the_rate_is_the_documented_one(settings: Settings) -> None:
    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["enroll"] == f"{RATE}/minute"
    assert settings.FEDHEALTH_TRUSTED_PROXY_COUNT == 0  # gunicorn reached directly by default


def test_guesses_with_varying_forwarded_for_are_throttled_after_the_rate(agent_world: None) -> None:
    statuses = statuses_of_guesses(
        [{"HTTP_X_FORWARDED_FOR": f"198.51.100.{number}, 10.0.0.{number}"} for number in range(70)]
    )
    assert 429 not in statuses[:RATE]
    assert statuses[RATE:] == [429] * (70 - RATE)
    refused = APIClient().post(ENROLL, {"token": "one-more"}, format="json")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "throttled"


def test_behind_one_proxy_the_address_it_forwards_is_the_client(
    agent_world: None, settings: Settings
) -> None:
    settings.FEDHEALTH_TRUSTED_PROXY_COUNT = 1
    cache.clear()
    # The proxy (nginx) overwrites X-Forwarded-For with the address it saw: distinct clients.
    many_clients = statuses_of_guesses([{"HTTP_X_FORWARDED_FOR": f"198.51.100.{n}"} for n in range(RATE + 5)])
    assert 429 not in many_clients
    # One client behind it is throttled whatever it puts in front of the proxy's entry.
    one_client = statuses_of_guesses(
        [{"HTTP_X_FORWARDED_FOR": f"10.9.{n}.1, 203.0.113.7"} for n in range(RATE + 5)]
    )
    assert one_client[RATE:] == [429] * 5
