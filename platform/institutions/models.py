"""Institutions (hospitals), their one-time enrollment tokens and agent credentials.

Only hashes of tokens and credentials are stored: a database leak reveals no secret.
"""

from typing import Any

from django.db import models

from institutions.names import institution_name_key


class Institution(models.Model):
    name = models.CharField(max_length=200, unique=True)
    #: Names that read the same share a key and cannot both exist (``institutions.names``).
    name_key = models.CharField(max_length=200, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.name_key = institution_name_key(self.name)
        super().save(*args, **kwargs)

    def __str__(self) -> str:
        return self.name


class EnrollmentToken(models.Model):
    institution = models.ForeignKey(Institution, on_delete=models.CASCADE, related_name="enrollment_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-id"]

    @property
    def state(self) -> str:
        """``used``, ``withdrawn``, ``expired`` or ``unused`` (still works)."""
        from django.utils import timezone

        if self.used_at is not None:
            return "used"
        if self.withdrawn_at is not None:
            return "withdrawn"
        return "expired" if self.expires_at <= timezone.now() else "unused"


class AgentCredential(models.Model):
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT, related_name="credentials")
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=50, blank=True)
    hostname = models.CharField(max_length=200, blank=True)
    #: The limits of the site's policy, as its last heartbeat reported them
    #: (federation.policy_limits); {} until it has.
    policy = models.JSONField(default=dict, blank=True)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def __str__(self) -> str:
        return f"credential {self.pk} of {self.institution}"
