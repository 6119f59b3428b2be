"""Who may read the API schema and its viewers (/api/schema/, /api/docs/, /api/redoc/):
anyone with FEDHEALTH_PUBLIC_API_SCHEMA (the default in development), signed-in people
only without it (the default in production)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from pytest_django.fixtures import Settings
from rest_framework.authtoken.models import Token

pytestmark = [pytest.mark.security, pytest.mark.django_db]

PAGES = ("/api/schema/", "/api/docs/", "/api/redoc/")


@pytest.mark.parametrize("path", PAGES)
def test_a_private_schema_refuses_anonymous_visitors(settings: Settings, path: str) -> None:
    settings.FEDHEALTH_PUBLIC_API_SCHEMA = False
    response = Client().get(path)
    assert response.status_code == 401
    assert b"openapi" not in response.content.lower()
    assert b"/api/v1/" not in response.content


@pytest.mark.parametrize("path", PAGES)
def test_a_private_schema_is_shown_to_signed_in_people(settings: Settings, path: str) -> None:
    settings.FEDHEALTH_PUBLIC_API_SCHEMA = False
    user = get_user_model().objects.create_user("olga", password=None)
    with_session = Client()
    with_session.force_login(user)
    assert with_session.get(path).status_code == 200
    with_token = Client(headers={"Authorization": f"Token {Token.objects.create(user=user).key}"})
    assert with_token.get(path).status_code == 200


def test_the_private_schema_is_the_whole_schema(settings: Settings) -> None:
    settings.FEDHEALTH_PUBLIC_API_SCHEMA = False
    client = Client()
    client.force_login(get_user_model().objects.create_user("olga", password=None))
    assert b"/api/v1/studies/" in client.get("/api/schema/").content


@pytest.mark.parametrize("path", PAGES)
def test_a_public_schema_is_open_to_anyone(settings: Settings, path: str) -> None:
    settings.FEDHEALTH_PUBLIC_API_SCHEMA = True
    assert Client().get(path).status_code == 200


def test_the_schema_is_private_by_default_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedplatform import env

    monkeypatch.delenv("FEDHEALTH_PUBLIC_API_SCHEMA", raising=False)
    monkeypatch.setenv("FEDHEALTH_ENV", "development")
    assert env.load().public_api_schema
    monkeypatch.setenv("FEDHEALTH_ENV", "production")
    for name in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"):
        monkeypatch.setenv(name, "x" * 50 if name == "SECRET_KEY" else "sqlite:///:memory:")
    assert not env.load().public_api_schema
    monkeypatch.setenv("FEDHEALTH_PUBLIC_API_SCHEMA", "true")
    assert env.load().public_api_schema
