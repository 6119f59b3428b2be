"""People and onboarding: invitations with one-time links, deactivation, password changes."""

from __future__ import annotations

import hashlib
import html
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient
from world import person_make

from accounts.models import Invitation, Role
from audit.models import AuditEvent
from institutions.models import Institution

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple 42"


def text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.content.decode())


def invite(coordinator: Client, **fields: object) -> str:
    """The one-time link the coordinator gets for the invitation."""
    response = coordinator.post("/people/", {"action": "invite", **fields})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    found = re.search(r'data-testid="invitation-link">([^<]+)<', response.content.decode())
    assert found is not None, text(response)
    return found.group(1)


def test_an_invited_data_owner_sets_a_password_and_signs_in(
    coordinator: Client, hospital_a: Institution
) -> None:
    link = invite(coordinator, username="dora", role="data_owner", institution=hospital_a.pk)
    secret = link.rstrip("/").rsplit("/", 1)[-1]
    record = Invitation.objects.get(username="dora")
    assert record.token_hash == hashlib.sha256(secret.encode()).hexdigest()  # only the hash is kept
    listing = text(coordinator.get("/people/"))
    assert 'data-testid="invitation-row" data-user="dora"' in listing
    assert secret not in listing  # shown once

    visitor = Client()
    opened = visitor.get(f"/invitations/{secret}/")
    assert (opened["Cache-Control"], opened["Referrer-Policy"]) == ("no-store", "same-origin")
    page = text(opened)
    assert "Account dora: institution data owner of Hospital A." in re.sub(r"<[^>]+>", "", page)
    mismatch = visitor.post(f"/invitations/{secret}/", {"password": PASSWORD, "password_again": "other"})
    assert "The two passwords differ." in text(mismatch)
    weak = visitor.post(f"/invitations/{secret}/", {"password": "dora", "password_again": "dora"})
    assert "too short" in text(weak) or "too similar" in text(weak)
    done = visitor.post(f"/invitations/{secret}/", {"password": PASSWORD, "password_again": PASSWORD})
    assert done.status_code == 302
    assert done["Location"] == "/login/"

    user = get_user_model().objects.get(username="dora")
    assert (user.profile.role, user.profile.institution) == (Role.DATA_OWNER, hospital_a)
    signed_in = visitor.post("/login/", {"username": "dora", "password": PASSWORD})
    assert signed_in.status_code == 302
    assert signed_in["Location"] == "/"
    assert "This link no longer works" in text(Client().get(f"/invitations/{secret}/"))
    kinds = set(AuditEvent.objects.values_list("kind", flat=True))
    assert {"invitation.created", "invitation.accepted", "user.created"} <= kinds


def test_a_withdrawn_invitation_link_no_longer_works(coordinator: Client) -> None:
    link = invite(coordinator, username="oliver", role="observer")
    secret = link.rstrip("/").rsplit("/", 1)[-1]
    record = Invitation.objects.get(username="oliver")
    coordinator.post("/people/", {"action": "withdraw", "id": record.pk})
    assert "This link no longer works" in text(Client().get(f"/invitations/{secret}/"))
    answer = Client().post(f"/invitations/{secret}/", {"password": PASSWORD, "password_again": PASSWORD})
    assert not get_user_model().objects.filter(username="oliver").exists()
    assert "This link no longer works" in text(answer)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"username": "obs", "role": "observer", "institution": "A"},
            "only data owners belong to an institution",
        ),
        ({"username": "own", "role": "data_owner"}, "a data owner needs an institution"),
        ({"username": "carol", "role": "observer"}, "exists already"),
        ({"username": "x", "role": "coordinator"}, "valid choice"),
    ],
)
def test_an_invitation_that_cannot_work_is_refused(
    coordinator: Client, hospital_a: Institution, fields: dict[str, object], message: str
) -> None:
    if fields.get("institution") == "A":
        fields = {**fields, "institution": hospital_a.pk}
    response = coordinator.post("/people/", {"action": "invite", **fields})
    assert message in text(response)
    assert not Invitation.objects.exists()


def test_a_deactivated_account_loses_its_session_and_its_token(coordinator: Client, make_client) -> None:  # type: ignore[no-untyped-def]
    observer = make_client("oscar", Role.OBSERVER)
    token = person_make("robot", Role.OBSERVER).token
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/v1/studies/").status_code == 200
    for name in ("oscar", "robot"):
        user = get_user_model().objects.get(username=name)
        coordinator.post("/people/", {"action": "deactivate", "id": user.pk})
    assert observer.get("/").status_code == 302  # sent to sign in
    assert api.get("/api/v1/studies/").status_code == 401
    assert 'data-user="oscar"' in text(coordinator.get("/people/"))
    oscar = get_user_model().objects.get(username="oscar")
    coordinator.post("/people/", {"action": "reactivate", "id": oscar.pk})
    oscar.refresh_from_db()
    assert oscar.is_active
    assert set(AuditEvent.objects.values_list("kind", flat=True)) >= {"user.deactivated", "user.reactivated"}


def test_nobody_deactivates_their_own_account(coordinator: Client) -> None:
    carol = get_user_model().objects.get(username="carol")
    response = coordinator.post("/people/", {"action": "deactivate", "id": carol.pk}, follow=True)
    assert "you cannot deactivate your own account" in text(response)
    carol.refresh_from_db()
    assert carol.is_active


def test_a_person_changes_their_own_password(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client("pat", Role.OBSERVER)
    user = get_user_model().objects.get(username="pat")
    user.set_password("the old one is long enough 1")
    user.save()
    client.force_login(user)
    wrong = client.post(
        "/account/password/",
        {"old_password": "not it", "new_password1": PASSWORD, "new_password2": PASSWORD},
    )
    assert "Your old password was entered incorrectly" in text(wrong)
    done = client.post(
        "/account/password/",
        {
            "old_password": "the old one is long enough 1",
            "new_password1": PASSWORD,
            "new_password2": PASSWORD,
        },
    )
    assert done.status_code == 302
    assert client.get("/").status_code == 200  # this session stays signed in
    assert Client().post("/login/", {"username": "pat", "password": PASSWORD})["Location"] == "/"
    assert AuditEvent.objects.filter(kind="user.password_changed").exists()


def test_a_coordinator_cannot_lock_out_other_coordinators_or_administrators(
    coordinator: Client, make_client
) -> None:  # type: ignore[no-untyped-def]
    make_client("cora", Role.COORDINATOR)
    admin = get_user_model().objects.create_superuser("root", password=PASSWORD)
    listing = text(coordinator.get("/people/"))
    assert 'data-user="cora"' in listing
    assert listing.count('data-testid="deactivate"') == 0  # carol herself, cora and root: none
    for name in ("cora", "root"):
        target = get_user_model().objects.get(username=name)
        response = coordinator.post("/people/", {"action": "deactivate", "id": target.pk}, follow=True)
        assert "(de)activated by an administrator" in text(response)
        target.refresh_from_db()
        assert target.is_active
    root = Client()
    root.force_login(admin)
    cora = get_user_model().objects.get(username="cora")
    root.post("/people/", {"action": "deactivate", "id": cora.pk})
    cora.refresh_from_db()
    assert not cora.is_active  # an administrator may
