"""Launch checks: agents report their policy's limits with their heartbeats, and a job that a
site will refuse is flagged before it starts, naming the site and the rule."""

from __future__ import annotations

import pytest
from platform_world import Site
from rest_framework.test import APIClient
from world import job_make, study_approve_all, study_make

from federation.policy_limits import PolicyLimits, limits_refusal
from federation.privacy.settings import PrivacySettings
from institutions.models import AgentCredential

pytestmark = pytest.mark.django_db


@pytest.fixture
def sites(agent_world: None) -> list[Site]:
    return [Site("Hospital A"), Site("Hospital B"), Site("Hospital C")]


def _heartbeat(site: Site, policy: object) -> int:
    response = site.client.post(
        "/api/agent/v1/heartbeat", {"agent_version": "1.1", "policy": policy}, format="json"
    )
    return response.status_code


def test_a_job_a_site_will_refuse_is_flagged_before_it_starts(
    sites: list[Site], coordinator_client: APIClient
) -> None:
    assert _heartbeat(sites[0], {"max_rounds": 5}) == 200
    assert _heartbeat(sites[1], PolicyLimits(require_secure_aggregation=True).to_json()) == 200
    study = study_make("Launch", [site.institution for site in sites])
    study_approve_all(study)
    job = job_make(study, num_rounds=10)
    warnings = coordinator_client.get(f"/api/v1/jobs/{job.pk}/").json()["launch_warnings"]
    assert warnings == [
        {
            "institution": "Hospital A",
            "reason": "the job asks for 10 rounds; the hospital's policy allows at most 5 "
            "(policy.max_rounds)",
        },
        {
            "institution": "Hospital B",
            "reason": "the hospital's policy requires secure aggregation and the study does not use it",
        },
        {"institution": "Hospital C", "reason": "no agent of this site has reported its policy yet"},
    ]


def test_a_job_within_every_sites_policy_has_no_warning(
    sites: list[Site], coordinator_client: APIClient
) -> None:
    for site in sites:
        assert _heartbeat(site, PolicyLimits().to_json()) == 200
    study = study_make("Fits", [site.institution for site in sites])
    job = job_make(study, num_rounds=10)
    assert coordinator_client.get(f"/api/v1/jobs/{job.pk}/").json()["launch_warnings"] == []


def test_policy_limits_that_cannot_be_read_are_refused(sites: list[Site]) -> None:
    assert _heartbeat(sites[0], {"max_rounds": "many"}) == 400
    assert AgentCredential.objects.get(pk=sites[0].credential_id).policy == {}


def test_the_agents_rule_and_the_launch_check_are_one_rule() -> None:
    """The agent refuses a task with limits_refusal too (silo_agent.policy): same words."""
    reason = limits_refusal(
        PolicyLimits(max_epochs=2, allowed_model_kinds=("logistic",)),
        rounds=3,
        epochs=1,
        model_kind="mlp",
        strategy="fedavg",
        privacy=PrivacySettings.from_json({}),
    )
    assert (
        reason
        == "model kind 'mlp' is not allowed by the hospital's policy (policy.allowed_model_kinds: logistic)"
    )
