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
