"""The Django admin (superusers only) lists every model and never shows secret hashes."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client

from institutions.models import Institution
from institutions.services import agent_enroll, enrollment_token_create
from training.models import Job

pytestmark = pytest.mark.django_db

PLATFORM_APPS = ("accounts", "audit", "institutions", "studies", "training")


@pytest.fixture
def superuser_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    return client


def test_every_platform_model_is_registered() -> None:
    models = [model for label in PLATFORM_APPS for model in apps.get_app_config(label).get_models()]
    assert [model.__name__ for model in models if not admin.site.is_registered(model)] == []


def test_every_changelist_renders(superuser_client: Client, running_job: Job) -> None:
    for label in PLATFORM_APPS:
        for model in apps.get_app_config(label).get_models():
            url = f"/admin/{label}/{model._meta.model_name}/"
            assert superuser_client.get(url).status_code == 200, url


def test_credential_page_hides_the_secret_hash(superuser_client: Client, hospital_a: Institution) -> None:
    token = enrollment_token_create(institution=hospital_a, actor="user:setup").token
    credential = agent_enroll(token=token, agent_version="1", hostname="h").credential
    page = superuser_client.get(f"/admin/institutions/agentcredential/{credential.pk}/change/")
    assert page.status_code == 200
    assert credential.secret_hash not in page.content.decode()


def test_admin_refuses_other_users(client: Client) -> None:
    client.force_login(get_user_model().objects.create_user("staffless"))
    assert client.get("/admin/training/job/").status_code == 302
