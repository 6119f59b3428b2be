"""Roles and scopes, authentication errors, ``GET me/`` and ``manage.py create_user``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import Profile, Role
from accounts.selectors import user_scope
from institutions.models import Institution

pytestmark = pytest.mark.django_db


def _create_user(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_user", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _token_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


# --- roles and scopes --------------------------------------------------------------------


def test_user_without_profile_is_an_observer() -> None:
    user = get_user_model().objects.create_user("noprofile")
    scope = user_scope(user=user)
    assert scope.role == Role.OBSERVER
    assert not scope.is_coordinator
    assert scope.sees_every_institution


def test_superuser_counts_as_coordinator_even_with_another_profile(hospital_a: Institution) -> None:
    user = get_user_model().objects.create_superuser("root", password=None)
    Profile.objects.create(user=user, role=Role.DATA_OWNER, institution=hospital_a)
    assert user_scope(user=user).is_coordinator


def test_data_owner_scope_is_limited_to_the_institution(hospital_a: Institution) -> None:
    user = get_user_model().objects.create_user("dana")
    Profile.objects.create(user=user, role=Role.DATA_OWNER, institution=hospital_a)
    scope = user_scope(user=user)
    assert scope.is_data_owner
    assert scope.institution_id == hospital_a.pk
    assert not scope.sees_every_institution


def test_superuser_without_profile_may_write() -> None:
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_superuser("root", password=None))
    response = client.post("/api/v1/institutions/", {"name": "Hospital Z"}, format="json")
    assert response.status_code == 201, response.content


def test_user_without_profile_may_read_but_not_write() -> None:
    client = APIClient()
    client.force_login(get_user_model().objects.create_user("plain"))
    assert client.get("/api/v1/institutions/").status_code == 200
    response = client.post("/api/v1/institutions/", {"name": "Hospital Z"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


# --- authentication errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/institutions/", "/api/v1/me/", "/api/v1/jobs/", "/api/v1/audit-events/"]
)
def test_unauthenticated_request_gets_401_in_the_error_shape(path: str) -> None:
    response = APIClient().get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    error = response.json()["error"]
    assert error["code"] == "not_authenticated"
    assert error["message"]


def test_unknown_token_gets_401() -> None:
    response = _token_client("0" * 40).get("/api/v1/institutions/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


# --- me ----------------------------------------------------------------------------------


def test_me_for_a_data_owner_names_the_institution(
    owner_a_client: APIClient, hospital_a: Institution
) -> None:
    response = owner_a_client.get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json() == {
        "username": "alice",
        "role": "data_owner",
        "institution": {"id": hospital_a.pk, "name": "Hospital A"},
    }


def test_me_for_a_coordinator_has_no_institution(coordinator_client: APIClient) -> None:
    assert coordinator_client.get("/api/v1/me/").json() == {
        "username": "carol",
        "role": "coordinator",
        "institution": None,
    }


def test_me_with_a_session(owner_a_client: APIClient) -> None:
    client = APIClient()
    client.force_login(get_user_model().objects.get(username="alice"))
    assert client.get("/api/v1/me/").json()["role"] == "data_owner"


# --- create_user -------------------------------------------------------------------------


def test_create_user_prints_only_a_working_token() -> None:
    out, err = _create_user("carla", "--role", "coordinator", "--token")
    token = out.strip()
    assert len(out.splitlines()) == 1
    assert "carla" in err
    assert _token_client(token).get("/api/v1/me/").json()["role"] == "coordinator"
    assert not get_user_model().objects.get(username="carla").has_usable_password()


def test_create_user_data_owner_with_institution(hospital_a: Institution) -> None:
    _create_user("dora", "--role", "data_owner", "--institution", "Hospital A")
    profile = Profile.objects.get(user__username="dora")
    assert profile.role == Role.DATA_OWNER
    assert profile.institution == hospital_a


def test_create_user_reads_the_password_file(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("correct horse battery staple\n")
    out, _ = _create_user("olga", "--role", "observer", "--password-file", str(password_file))
    assert out == ""
    assert get_user_model().objects.get(username="olga").check_password("correct horse battery staple")


def test_create_user_random_password_then_token() -> None:
    out, _ = _create_user("rita", "--role", "observer", "--random-password", "--token")
    password, token = out.splitlines()
    user = get_user_model().objects.get(username="rita")
    assert user.check_password(password)
    assert len(password) >= 16
    assert _token_client(token).get("/api/v1/me/").json()["username"] == "rita"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--role", "data_owner"], "needs an institution"),
        (["--role", "data_owner", "--institution", "Nowhere"], "no institution named"),
        (["--role", "observer", "--institution", "Hospital A"], "only data owners"),
    ],
)
def test_create_user_refuses_bad_role_and_institution(
    hospital_a: Institution, arguments: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        _create_user("eve", *arguments)
    assert not get_user_model().objects.filter(username="eve").exists()


def test_create_user_refuses_a_weak_password(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("short")
    with pytest.raises(CommandError, match="too short"):
        _create_user("weak", "--role", "observer", "--password-file", str(password_file))
    assert not get_user_model().objects.filter(username="weak").exists()


def test_create_user_refuses_an_existing_name() -> None:
    _create_user("twice", "--role", "observer")
    with pytest.raises(CommandError, match="exists already"):
        _create_user("twice", "--role", "coordinator")
    assert Profile.objects.get(user__username="twice").role == Role.OBSERVER
