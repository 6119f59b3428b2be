"""Who a signed-in person is in the consortium: a role, and for data owners an institution."""

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    COORDINATOR = "coordinator", "Coordinator"
    DATA_OWNER = "data_owner", "Institution data owner"
    OBSERVER = "observer", "Observer (read only)"


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.OBSERVER)
    institution = models.ForeignKey(
        "institutions.Institution",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="data_owners",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(role="data_owner") | models.Q(institution__isnull=False),
                name="data_owner_has_institution",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


class Invitation(models.Model):
    """A one-time link on which an invited person sets their password (no mail server needed:
    the coordinator passes the link on). Only the link's hash is stored."""

    token_hash = models.CharField(max_length=64, unique=True)
    username = models.CharField(max_length=150)
    role = models.CharField(max_length=20, choices=Role.choices)
    institution = models.ForeignKey(
        "institutions.Institution", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    @property
    def state(self) -> str:
        """``accepted``, ``withdrawn``, ``expired`` or ``pending`` (the link still works)."""
        from django.utils import timezone

        if self.accepted_at is not None:
            return "accepted"
        if self.withdrawn_at is not None:
            return "withdrawn"
        return "expired" if self.expires_at <= timezone.now() else "pending"
