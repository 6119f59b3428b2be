"""The OpenAPI schema validates without warnings and documents every coordinator route."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

COORDINATOR_OPERATIONS = {
    ("get", "/api/v1/me/"),
    ("get", "/api/v1/institutions/"),
    ("post", "/api/v1/institutions/"),
    ("get", "/api/v1/institutions/{institution_id}/"),
    ("post", "/api/v1/institutions/{institution_id}/enrollment-tokens/"),
    ("get", "/api/v1/institutions/{institution_id}/credentials/"),
    ("post", "/api/v1/credentials/{credential_id}/revoke/"),
    ("get", "/api/v1/studies/"),
    ("post", "/api/v1/studies/"),
    ("get", "/api/v1/studies/{study_id}/"),
    ("post", "/api/v1/studies/{study_id}/decision/"),
    ("get", "/api/v1/jobs/"),
    ("post", "/api/v1/jobs/"),
    ("get", "/api/v1/jobs/{job_id}/"),
    ("post", "/api/v1/jobs/{job_id}/start/"),
    ("post", "/api/v1/jobs/{job_id}/pause/"),
    ("post", "/api/v1/jobs/{job_id}/resume/"),
    ("post", "/api/v1/jobs/{job_id}/cancel/"),
    ("get", "/api/v1/jobs/{job_id}/progress/"),
    ("get", "/api/v1/jobs/{job_id}/models/"),
    ("get", "/api/v1/models/{version_id}/download/"),
    ("get", "/api/v1/audit-events/"),
}


@pytest.fixture(scope="module")
def coordinator_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    target = Path(tmp_path_factory.mktemp("schema")) / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stderr=io.StringIO())
    return yaml.safe_load(target.read_text())


def test_schema_has_every_coordinator_operation(coordinator_schema: dict[str, dict[str, dict]]) -> None:
    documented = {
        (method, path) for path, operations in coordinator_schema["paths"].items() for method in operations
    }
    missing = COORDINATOR_OPERATIONS - documented
    assert not missing, missing


def test_every_coordinator_operation_declares_the_error_shape(
    coordinator_schema: dict[str, dict[str, dict]],
) -> None:
    for method, path in COORDINATOR_OPERATIONS:
        responses = coordinator_schema["paths"][path][method]["responses"]
        assert responses["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }, (method, path)
        if method == "post" and path != "/api/v1/studies/{study_id}/decision/":
            assert "403" in responses, (method, path)


def test_list_operations_are_paginated(coordinator_schema: dict[str, dict[str, dict]]) -> None:
    operation = coordinator_schema["paths"]["/api/v1/audit-events/"]["get"]
    parameters = {parameter["name"] for parameter in operation["parameters"]}
    assert {"limit", "offset", "institution", "job", "actor", "kind"} <= parameters
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/PaginatedAuditEventList"}
