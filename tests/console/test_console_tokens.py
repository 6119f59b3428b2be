"""Enrollment tokens on the institution page: listed with their state, withdrawn while
unused, and each with a site kit (configuration, systemd unit, commands; never the token)."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest
from django.test import Client

from fedplatform.errors import Unauthenticated
from institutions.models import Institution
from institutions.services import agent_enroll, enrollment_token_create
from silo_agent.config import parse_config

pytestmark = pytest.mark.django_db


def test_tokens_are_listed_with_their_state(coordinator: Client, hospital_a: Institution) -> None:
    used = enrollment_token_create(institution=hospital_a, actor="user:carol")
    agent_enroll(token=used.token, agent_version="1.0", hostname="a")
    unused = enrollment_token_create(institution=hospital_a, actor="user:carol")
    html = coordinator.get(f"/institutions/{hospital_a.pk}/").content.decode()
    assert f'data-token="{used.record.pk}"' in html
    assert 'data-testid="token-state" data-state="used"' in html
    assert 'data-testid="token-state" data-state="unused"' in html
    assert unused.token not in html  # never shown again
    assert html.count('data-testid="withdraw-token"') == 1  # only the unused one


def test_a_withdrawn_token_enrolls_no_agent(coordinator: Client, hospital_a: Institution) -> None:
    issued = enrollment_token_create(institution=hospital_a, actor="user:carol")
    response = coordinator.post(
        f"/institutions/{hospital_a.pk}/tokens/{issued.record.pk}/withdraw/", follow=True
    )
    assert "is withdrawn" in response.content.decode()
    issued.record.refresh_from_db()
    assert (issued.record.state, issued.record.withdrawn_by) == ("withdrawn", "user:carol")
    with pytest.raises(Unauthenticated):
        agent_enroll(token=issued.token, agent_version="1.0", hostname="a")


def test_a_used_token_is_not_withdrawn(coordinator: Client, hospital_a: Institution) -> None:
    issued = enrollment_token_create(institution=hospital_a, actor="user:carol")
    agent_enroll(token=issued.token, agent_version="1.0", hostname="a")
    response = coordinator.post(
        f"/institutions/{hospital_a.pk}/tokens/{issued.record.pk}/withdraw/", follow=True
    )
    assert "revoke the agent" in response.content.decode()
    issued.record.refresh_from_db()
    assert issued.record.withdrawn_at is None


def test_the_site_kit_configures_an_agent_for_this_server(
    coordinator: Client, hospital_a: Institution, tmp_path: Path
) -> None:
    issued = enrollment_token_create(institution=hospital_a, actor="user:carol")
    url = f"/institutions/{hospital_a.pk}/tokens/{issued.record.pk}/site-kit.zip"
    response = coordinator.get(url, HTTP_HOST="127.0.0.1:8000")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    folder = f"site-kit-{hospital_a.pk}-{issued.record.pk}"
    assert sorted(archive.namelist()) == [
        f"{folder}/{n}" for n in ("README.txt", "agent.toml", "silo-agent.service")
    ]
    everything = b"".join(archive.read(name) for name in archive.namelist()).decode()
    assert issued.token not in everything  # the kit holds no secret
    config = parse_config(
        tomllib.loads(archive.read(f"{folder}/agent.toml").decode()), config_path=tmp_path / "agent.toml"
    )
    assert config.server_url == "http://127.0.0.1:8000"
    assert config.credential_file == Path("/var/lib/silo-agent/credential.json")
    unit = archive.read(f"{folder}/silo-agent.service").decode()
    assert "ExecStart=/opt/silo-agent/bin/silo-agent run --config /etc/silo-agent/agent.toml" in unit
    readme = archive.read(f"{folder}/README.txt").decode()
    assert "silo-agent enroll --config /etc/silo-agent/agent.toml --token -" in readme
    assert hospital_a.name in readme


def test_only_coordinators_get_a_site_kit(observer: Client, owner_a: Client, hospital_a: Institution) -> None:
    issued = enrollment_token_create(institution=hospital_a, actor="user:carol")
    url = f"/institutions/{hospital_a.pk}/tokens/{issued.record.pk}/site-kit.zip"
    assert observer.get(url).status_code == 403
    assert owner_a.get(url).status_code == 403
