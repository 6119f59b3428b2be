"""Institutions, enrollment and agent credentials.

An enrollment token is single-use and expires; enrolling trades it for a long-lived
credential ``fha_<id>_<secret>``. Only SHA-256 hashes of both are stored: the secrets have
256 bits of entropy, so a plain hash is enough and lookups stay constant-time by id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from federation.errors import ConfigurationError
from federation.policy_limits import PolicyLimits
from fedplatform.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from institutions.models import AgentCredential, EnrollmentToken, Institution
from institutions.names import check_institution_name, institution_name_key

#: The longest lifetime of an enrollment token that a coordinator may ask for.
MAX_TOKEN_HOURS = 24 * 30
CREDENTIAL_PREFIX = "fha"
#: ``fha_<id>_<secret>``: the id in canonical decimal (``01`` is refused), the secret URL-safe base64.
CREDENTIAL_PATTERN = re.compile(
    rf"{CREDENTIAL_PREFIX}_(?P<id>[1-9][0-9]{{0,18}})_(?P<secret>[A-Za-z0-9_-]{{1,200}})"
)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def institution_create(*, name: str, actor: str) -> Institution:
    name = check_institution_name(name)
    key = institution_name_key(name)
    try:
        with transaction.atomic():
            institution = Institution.objects.create(name=name)
    except IntegrityError:
        raise Conflict(_taken_message(name, key), code="duplicate") from None
    audit_record(actor=actor, kind="institution.created", institution=institution, details={"name": name})
    return institution


def _taken_message(name: str, key: str) -> str:
    existing = Institution.objects.filter(name_key=key).values_list("name", flat=True).first()
    if existing is None or existing == name:
        return f"an institution named {name!r} exists already"
    return f"an institution named {existing!r} exists already, and {name!r} reads the same"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    record: EnrollmentToken


@transaction.atomic
def enrollment_token_create(*, institution: Institution, actor: str, hours: int | None = None) -> IssuedToken:
    """A new one-time token; the clear text exists only in this return value."""
    token = secrets.token_urlsafe(32)
    lifetime = timedelta(hours=hours or settings.FEDHEALTH_ENROLLMENT_TOKEN_HOURS)
    record = EnrollmentToken.objects.create(
        institution=institution,
        token_hash=secret_hash(token),
        created_by=actor,
        expires_at=timezone.now() + lifetime,
    )
    audit_record(
        actor=actor,
        kind="enrollment_token.created",
        institution=institution,
        details={"token_id": record.pk, "expires_at": record.expires_at.isoformat()},
    )
    return IssuedToken(token=token, record=record)


@transaction.atomic
def enrollment_token_withdraw(*, institution: Institution, token_id: int, actor: str) -> EnrollmentToken:
    """Withdraw an unused token: no agent can enroll with it any more."""
    record = EnrollmentToken.objects.select_for_update().filter(institution=institution, pk=token_id).first()
    if record is None:
        raise NotFound("no such enrollment token")
    if record.state == "used":
        raise Conflict("this token was used: revoke the agent's credential instead", code="token_used")
    if record.state != "unused":
        raise Conflict(f"this token is {record.state} already", code=f"token_{record.state}")
    record.withdrawn_at = timezone.now()
    record.withdrawn_by = actor
    record.save(update_fields=["withdrawn_at", "withdrawn_by"])
    audit_record(
        actor=actor,
        kind="enrollment_token.withdrawn",
        institution=institution,
        details={"token_id": record.pk},
    )
    return record


@dataclass(frozen=True)
class Enrollment:
    credential: AgentCredential
    key: str


@transaction.atomic
def agent_enroll(*, token: str, agent_version: str, hostname: str) -> Enrollment:
    """Trade a valid, unused, unexpired token for a credential."""
    record = EnrollmentToken.objects.select_for_update().filter(token_hash=secret_hash(token)).first()
    if record is None or record.state != "unused":
        # One answer for unknown, used, withdrawn and expired tokens: nothing to learn by probing.
        raise Unauthenticated("the enrollment token is invalid, used or expired", code="invalid_token")
    record.used_at = timezone.now()
    record.save(update_fields=["used_at"])
    secret = secrets.token_urlsafe(32)
    credential = AgentCredential.objects.create(
        institution=record.institution,
        secret_hash=secret_hash(secret),
        agent_version=agent_version[:50],
        hostname=hostname[:200],
    )
    audit_record(
        actor=f"agent:{credential.pk}",
        kind="agent.enrolled",
        institution=record.institution,
        details={"credential_id": credential.pk, "token_id": record.pk, "hostname": hostname[:200]},
    )
    return Enrollment(credential=credential, key=f"{CREDENTIAL_PREFIX}_{credential.pk}_{secret}")


def credential_authenticate(*, key: str) -> AgentCredential:
    """The active credential for ``key``, or :class:`Unauthenticated`."""
    # One spelling per credential: no leading zeros, no other digits than ASCII ones.
    parsed = CREDENTIAL_PATTERN.fullmatch(key)
    if parsed is None:
        raise Unauthenticated("malformed agent credential", code="invalid_credential")
    identifier, secret = parsed.group("id"), parsed.group("secret")
    credential = AgentCredential.objects.select_related("institution").filter(pk=int(identifier)).first()
    expected = credential.secret_hash if credential else secret_hash("")
    if not hmac.compare_digest(expected, secret_hash(secret)) or credential is None:
        raise Unauthenticated("unknown agent credential", code="invalid_credential")
    if credential.revoked_at is not None:
        raise Unauthenticated("this agent credential has been revoked", code="credential_revoked")
    return credential


@transaction.atomic
def credential_revoke(*, credential_id: int, actor: str) -> AgentCredential:
    credential = AgentCredential.objects.select_for_update().filter(pk=credential_id).first()
    if credential is None:
        raise NotFound("no such credential")
    if credential.revoked_at is None:
        credential.revoked_at = timezone.now()
        credential.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            kind="agent.revoked",
            institution=credential.institution,
            details={"credential_id": credential.pk},
        )
    return credential


def credential_touch(
    *, credential: AgentCredential, agent_version: str | None = None, policy: dict[str, object] | None = None
) -> None:
    """Record a heartbeat (no audit event: heartbeats are not changes of state), with the
    limits of the site's policy if it reported them."""
    fields: dict[str, object] = {"last_seen_at": timezone.now()}
    if agent_version:
        fields["agent_version"] = agent_version[:50]
    if policy is not None:
        try:
            fields["policy"] = PolicyLimits.from_json(policy).to_json()
        except ConfigurationError as error:
            raise InvalidInput(str(error)) from None
    AgentCredential.objects.filter(pk=credential.pk).update(**fields)
