"""Invitations through the API: a coordinator invites, the person accepts with the secret
and a password and gets an API token; the link works once."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from institutions.models import Institution

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple 42"


def test_an_invited_data_owner_gets_an_account_and_a_token(
    coordinator_client: APIClient, hospital_a: Institution, agent_world: None
) -> None:
    body = {"username": "dora", "role": "data_owner", "institution": hospital_a.pk}
    created = coordinator_client.post("/api/v1/invitations/", body, format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    assert created.json()["link"].endswith(f"/invitations/{secret}/")

    anonymous = APIClient()
    weak = anonymous.post(
        "/api/v1/invitations/accept/", {"secret": secret, "password": "dora"}, format="json"
    )
    assert weak.status_code == 400
    accepted = anonymous.post(
        "/api/v1/invitations/accept/", {"secret": secret, "password": PASSWORD}, format="json"
    )
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["role"] == "data_owner"
    owner = APIClient()
    owner.credentials(HTTP_AUTHORIZATION=f"Token {accepted.json()['token']}")
    me = owner.get("/api/v1/me/").json()
    assert (me["username"], me["institution"]["id"]) == ("dora", hospital_a.pk)

    again = anonymous.post(
        "/api/v1/invitations/accept/", {"secret": secret, "password": PASSWORD}, format="json"
    )
    assert again.status_code == 404


def test_only_coordinators_invite(observer_client: APIClient, owner_a_client: APIClient) -> None:
    body = {"username": "x", "role": "observer"}
    assert observer_client.post("/api/v1/invitations/", body, format="json").status_code == 403
    assert owner_a_client.post("/api/v1/invitations/", body, format="json").status_code == 403


def test_a_coordinator_cannot_be_invited(coordinator_client: APIClient) -> None:
    response = coordinator_client.post(
        "/api/v1/invitations/", {"username": "boss", "role": "coordinator"}, format="json"
    )
    assert response.status_code == 400
