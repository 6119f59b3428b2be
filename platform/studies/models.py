"""Studies: what is trained, on which data schema, how it is aggregated, and who takes part."""

from django.db import models


class Study(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    model_config = models.JSONField(help_text="federation.models.ModelConfig.to_json()")
    data_schema = models.JSONField(help_text="federation.data.DataSchema.to_json()")
    feature_scaling = models.JSONField(null=True, blank=True, help_text='{"mean": [...], "std": [...]}')
    #: ``ScalingMode``: agreed through the agents, given, or explicitly none.
    scaling_mode = models.CharField(max_length=10, default="none")
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


class ScalingMode(models.TextChoices):
    """Where a study's feature scaling comes from: never a silent default."""

    #: Agreed through the sites' agents (:class:`SummaryRequest`) before the first job.
    AGENTS = "agents"
    #: Given by the coordinator when the study was set up.
    GIVEN = "given"
    #: Explicitly none: the sites train on their features as they are.
    NONE = "none"


class SummaryRequestState(models.TextChoices):
    OPEN = "open"
    COMPLETE = "complete"
    FAILED = "failed"


class SummaryRequest(models.Model):
    """The coordinator's question to every approved site of a study: the aggregates of its
    data (counts, sums, sums of squares, category counts) that the data agreement combines."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="summary_requests")
    state = models.CharField(
        max_length=10, choices=SummaryRequestState.choices, default=SummaryRequestState.OPEN
    )
    requested_by = models.CharField(max_length=200)
    requested_at = models.DateTimeField(auto_now_add=True)
    deadline_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Why it failed: the sites that refused and their reasons, or what did not add up.
    reason = models.TextField(blank=True)
    #: Summed under secure aggregation (``federation.privacy.secure_sum``): the server sees
    #: only the total. ``phase`` is then "keys" (sites advertise keys), then "mask".
    secure_aggregation = models.BooleanField(default=False)
    phase = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["-id"]


class SummaryAnswer(models.Model):
    """One site's answer: its summary (``federation.data.agreement.SiteSummary``) or a refusal."""

    request = models.ForeignKey(SummaryRequest, on_delete=models.CASCADE, related_name="answers")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    summary = models.JSONField(null=True, blank=True)
    refusal = models.TextField(blank=True)
    #: Under secure aggregation: the site's public key for the request, then its masked input.
    public_key = models.CharField(max_length=100, blank=True)
    masked = models.TextField(blank=True)
    answered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request", "institution"], name="one_summary_per_site")
        ]
        ordering = ["institution__name"]
