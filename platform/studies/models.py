"""Studies: what is trained, on which data schema, how it is aggregated, and who takes part."""

from django.db import models


class Study(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    model_config = models.JSONField(help_text="federation.models.ModelConfig.to_json()")
    data_schema = models.JSONField(help_text="federation.data.DataSchema.to_json()")
    feature_scaling = models.JSONField(null=True, blank=True, help_text='{"mean": [...], "std": [...]}')
    strategy = models.CharField(max_length=40)
    strategy_params = models.JSONField(default=dict, blank=True)
    privacy = models.JSONField(default=dict, blank=True)
    update_norm_bound = models.JSONField(
        default=dict, blank=True, help_text='{"max_ratio": 10, "action": "refuse" or "clip"}; {} for none'
    )
    training = models.JSONField(help_text="local epochs, batch size, learning rate, proximal mu")
    validation_fraction = models.FloatField(default=0.2)
    seed = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    institutions = models.ManyToManyField(  # type: ignore[var-annotated]
        "institutions.Institution", through="StudyParticipant"
    )

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.name


class Decision(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"


class StudyParticipant(models.Model):
    """An institution's place in a study and its data owner's decision about it."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participants")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices, default=Decision.PENDING)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "institution"], name="one_participation")]
        ordering = ["institution__name"]
