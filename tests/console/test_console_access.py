"""Who sees and does what in the console: sign-in, roles, scopes and the CSP header."""

from __future__ import annotations

import re

import pytest
from console_support import approve_all, credential
from django.test import Client

from console.middleware import CONTENT_SECURITY_POLICY
from institutions.models import AgentCredential, Institution
from studies.models import Decision, Study
from training.models import Job, JobState, ModelVersion

pytestmark = pytest.mark.django_db

ACTION_TEST_IDS = (
    "start-button",
    "pause-button",
    "resume-button",
    "cancel-button",
    "create-token",
    "revoke-button",
    "register-institution",
    "new-study-link",
    "create-job",
    "approve-button",
    "decline-button",
)


def _pages(job: Job, institution: Institution) -> list[str]:
    return [
        "/",
        "/institutions/",
        f"/institutions/{institution.pk}/",
        "/studies/",
        f"/studies/{job.study_id}/",
        "/jobs/",
        f"/jobs/{job.pk}/",
        "/audit/",
    ]


def test_anonymous_visitors_are_sent_to_sign_in(
    client: Client, draft_job: Job, hospital_a: Institution
) -> None:
    for url in [*_pages(draft_job, hospital_a), "/studies/new/", f"/jobs/{draft_job.pk}/cancel/"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next="), url


def test_every_page_title_is_plain_text(coordinator: Client, draft_job: Job, hospital_a: Institution) -> None:
    for url in [*_pages(draft_job, hospital_a), "/studies/new/"]:
        html = coordinator.get(url).content.decode()
        title = re.search(r"<title>(.*?)</title>", html, re.S)
        assert title is not None, url
        text = title.group(1).strip()
        assert "<" not in text, (url, text[:80])
        assert "\n" not in text, (url, text[:80])


@pytest.mark.parametrize(
    "address", ["/jobs/{job}/start/", "/studies/{study}/jobs/", "/studies/{study}/decision/"]
)
def test_a_buttons_address_visited_shows_a_page_back(
    coordinator: Client, draft_job: Job, address: str
) -> None:
    url = address.format(job=draft_job.pk, study=draft_job.study_id)
    response = coordinator.get(url)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "Content-Security-Policy" in response
    back = re.search(r'href="([^"]+)" data-testid="back-link"', response.content.decode())
    assert back is not None
    assert back.group(1) == "/" + url.split("/")[1] + "/"  # the section's list, never the object
    assert coordinator.get(back.group(1)).status_code == 200


def test_anonymous_live_json_is_401_json(client: Client, draft_job: Job) -> None:
    response = client.get(f"/jobs/{draft_job.pk}/live.json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_anonymous_post_changes_nothing(client: Client, draft_job: Job) -> None:
    response = client.post(f"/jobs/{draft_job.pk}/cancel/")
    assert response.status_code == 302
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT


def test_sign_in_and_out(client: Client, django_user_model: type) -> None:
    from accounts.models import Role
    from accounts.services import user_create

    user_create(
        username="dora",
        role=Role.OBSERVER,
        institution=None,
        password="a-long-pass-phrase-42",
        with_token=False,
        actor="system",
    )
    page = client.get("/login/")
    assert page.status_code == 200
    assert b'id="id_username"' in page.content
    assert b'id="id_password"' in page.content
    wrong = client.post("/login/", {"username": "dora", "password": "nope"})
    assert wrong.status_code == 200
    assert b'data-testid="login-error"' in wrong.content
    signed_in = client.post("/login/", {"username": "dora", "password": "a-long-pass-phrase-42"}, follow=True)
    assert signed_in.redirect_chain[-1][0] == "/"
    assert b'data-testid="user-role">Observer (read only)<' in signed_in.content
    assert client.get("/logout/").status_code == 405  # signing out is a POST
    out = client.post("/logout/")
    assert out.status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("role", ["coordinator", "observer", "owner_a"])
def test_every_page_renders_for_every_role(
    request: pytest.FixtureRequest, role: str, running_job: Job, hospital_a: Institution
) -> None:
    browser: Client = request.getfixturevalue(role)
    for url in _pages(running_job, hospital_a):
        response = browser.get(url)
        assert response.status_code == 200, (role, url)
        assert b'data-testid="nav-audit"' in response.content, url
        assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, url
    job_page = browser.get(f"/jobs/{running_job.pk}/").content.decode()
    assert 'data-testid="job-state" data-state="running"' in job_page
    assert job_page.count('data-testid="round-row"') == 1
    assert 'id="job-live-data" type="application/json"' in job_page


def test_each_role_is_named_in_the_top_bar(coordinator: Client, observer: Client, owner_a: Client) -> None:
    assert b'data-testid="user-role">Coordinator<' in coordinator.get("/").content
    assert b'data-testid="user-role">Observer (read only)<' in observer.get("/").content
    assert b'data-testid="user-role">Data owner \xc2\xb7 Hospital A<' in owner_a.get("/").content


def test_csp_only_on_console_pages(coordinator: Client) -> None:
    assert coordinator.get("/").has_header("Content-Security-Policy")
    assert coordinator.get("/login/").has_header("Content-Security-Policy")
    assert not coordinator.get("/api/v1/me/").has_header("Content-Security-Policy")
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


# --- observers read everything and change nothing ----------------------------------------


def _action_ids_in(html: str) -> list[str]:
    return [test_id for test_id in ACTION_TEST_IDS if f'data-testid="{test_id}"' in html]


def test_observer_sees_no_action_buttons(observer: Client, draft_job: Job, hospital_a: Institution) -> None:
    credential(hospital_a)
    for url in [*_pages(draft_job, hospital_a)]:
        html = observer.get(url).content.decode()
        assert _action_ids_in(html) == [], url


def test_coordinator_sees_the_actions(coordinator: Client, draft_job: Job, hospital_a: Institution) -> None:
    credential(hospital_a)
    assert "start-button" in _action_ids_in(coordinator.get(f"/jobs/{draft_job.pk}/").content.decode())
    assert _action_ids_in(coordinator.get(f"/institutions/{hospital_a.pk}/").content.decode()) == [
        "create-token",
        "revoke-button",
    ]
    assert "create-job" in _action_ids_in(coordinator.get(f"/studies/{draft_job.study_id}/").content.decode())


def test_observer_posts_are_refused_and_change_nothing(
    observer: Client, draft_job: Job, hospital_a: Institution, study_ab: Study
) -> None:
    own = credential(hospital_a)
    posts = {
        "/institutions/": {"name": "Rogue Hospital"},
        f"/institutions/{hospital_a.pk}/tokens/": {"hours": "24"},
        f"/credentials/{own.pk}/revoke/": {},
        "/studies/new/": {"name": "Rogue study"},
        f"/studies/{study_ab.pk}/decision/": {"decision": "approve"},
        f"/studies/{study_ab.pk}/jobs/": {"num_rounds": "1", "min_updates": "1"},
        f"/jobs/{draft_job.pk}/start/": {},
        f"/jobs/{draft_job.pk}/cancel/": {},
    }
    for url, body in posts.items():
        assert observer.post(url, body).status_code == 403, url
    assert observer.get(f"/jobs/{draft_job.pk}/cancel/").status_code == 403
    assert observer.get(f"/credentials/{own.pk}/revoke/").status_code == 403
    assert not Institution.objects.filter(name="Rogue Hospital").exists()
    assert not Study.objects.filter(name="Rogue study").exists()
    assert Job.objects.count() == 1
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT
    assert AgentCredential.objects.get(pk=own.pk).revoked_at is None
    assert set(study_ab.participants.values_list("decision", flat=True)) == {Decision.PENDING}
    assert hospital_a.enrollment_tokens.count() == 1  # only the one credential() used


def test_data_owner_may_not_use_coordinator_actions(owner_a: Client, draft_job: Job) -> None:
    assert owner_a.post(f"/jobs/{draft_job.pk}/start/").status_code == 403
    assert owner_a.post("/institutions/", {"name": "Mine"}).status_code == 403
    assert owner_a.get("/studies/new/").status_code == 403
    draft_job.refresh_from_db()
    assert draft_job.state == JobState.DRAFT


# --- a data owner sees only their own institution ------------------------------------------


def test_data_owner_cannot_see_another_institution(
    owner_b: Client, study_a: Study, hospital_a: Institution, hospital_b: Institution
) -> None:
    assert owner_b.get(f"/institutions/{hospital_a.pk}/").status_code == 404
    assert owner_b.get(f"/institutions/{hospital_b.pk}/").status_code == 200
    assert owner_b.get(f"/studies/{study_a.pk}/").status_code == 404
    listing = owner_b.get("/institutions/").content.decode()
    assert "Hospital B" in listing
    assert "Hospital A" not in listing
    assert "Study A only" not in owner_b.get("/studies/").content.decode()


def test_data_owner_cannot_reach_another_institutions_job(
    owner_b: Client, study_a: Study, isolated_model_storage: object
) -> None:
    from training.services import job_begin, job_create, job_start

    job = job_create(
        study=study_a,
        num_rounds=1,
        min_updates=1,
        round_deadline_seconds=60,
        max_deadline_extensions=0,
        actor="user:setup",
    )
    approve_all(study_a)
    job_start(job_id=job.pk, actor="user:setup")
    job_begin(job_id=job.pk)
    version = ModelVersion.objects.get(job=job)
    assert owner_b.get(f"/jobs/{job.pk}/").status_code == 404
    live = owner_b.get(f"/jobs/{job.pk}/live.json")
    assert live.status_code == 404
    assert live.json()["error"]["code"] == "not_found"
    assert owner_b.get(f"/models/{version.pk}/download").status_code == 404
    assert f"Job {job.pk}" not in owner_b.get("/jobs/").content.decode()


def test_data_owner_cannot_decide_for_another_institution(owner_b: Client, study_a: Study) -> None:
    response = owner_b.post(f"/studies/{study_a.pk}/decision/", {"decision": "approve"})
    assert response.status_code == 404
    assert study_a.participants.get().decision == Decision.PENDING


def test_unknown_objects_are_404(coordinator: Client) -> None:
    for url in ["/institutions/999/", "/studies/999/", "/jobs/999/", "/models/999/download"]:
        assert coordinator.get(url).status_code == 404, url
