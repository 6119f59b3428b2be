"""Federated jobs, their rounds, the updates sites send and the model versions they make.

The round state machine (see docs/rounds.md):

    OPEN --first update--> COLLECTING --quorum or deadline--> AGGREGATING --> CLOSED
      \\________________________ deadline, too few updates ____________________--> FAILED

Every transition happens in a service, under a row lock, after a status check, so that a
task that runs twice changes nothing the second time.
"""

from datetime import datetime

from django.db import models

from training.fields import RoundPlanField


class JobState(models.TextChoices):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Job(models.Model):
    study = models.ForeignKey("studies.Study", on_delete=models.PROTECT, related_name="jobs")
    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.DRAFT, db_index=True)
    num_rounds = models.PositiveIntegerField()
    min_updates = models.PositiveIntegerField(
        help_text="fewest updates a round may close with at its deadline"
    )
    round_deadline_seconds = models.PositiveIntegerField(default=600)
    max_deadline_extensions = models.PositiveIntegerField(default=1)
    failure_reason = models.TextField(blank=True)
    plan = RoundPlanField(
        help_text="how every round is aggregated: the strategy, the privacy settings with the noise "
        "resolved for this job, and the model spec (federation.rounds.RoundPlan)"
    )
    training_stopped_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="last training round when training ended early (the privacy budget, or early stopping)",
    )
    early_stopping_rounds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="end training once the sites' validation loss has not improved for this many rounds",
    )
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    #: While paused: since when (the open round's clock stops).
    paused_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"job {self.pk} of {self.study}"

    @property
    def last_training_round(self) -> int:
        """The number of the last training round: the final evaluation comes after it."""
        if self.training_stopped_after is None:
            return self.num_rounds
        return self.training_stopped_after


class RoundKind(models.TextChoices):
    TRAIN = "train"
    EVALUATE = "evaluate"


class RoundState(models.TextChoices):
    OPEN = "open"
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    CLOSED = "closed"
    FAILED = "failed"
    #: Ended by a person cancelling its job: no site dropped out.
    CANCELLED = "cancelled"


#: States in which a round accepts updates.
ACCEPTING_STATES = (RoundState.OPEN, RoundState.COLLECTING)
#: States of a round that is not finished.
ACTIVE_STATES = (RoundState.OPEN, RoundState.COLLECTING, RoundState.AGGREGATING)


class Round(models.Model):
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="rounds")
    number = models.PositiveIntegerField(
        help_text="1..num_rounds for training, num_rounds + 1 for evaluation"
    )
    kind = models.CharField(max_length=10, choices=RoundKind.choices, default=RoundKind.TRAIN)
    state = models.CharField(
        max_length=12, choices=RoundState.choices, default=RoundState.OPEN, db_index=True
    )
    base_version = models.ForeignKey("ModelVersion", on_delete=models.PROTECT, related_name="rounds_started")
    expected_updates = models.PositiveIntegerField()
    opened_at = models.DateTimeField(auto_now_add=True)
    deadline_at = models.DateTimeField(db_index=True)
    deadline_extensions = models.PositiveIntegerField(default=0)
    last_update_at = models.DateTimeField(null=True, blank=True)
    aggregating_since = models.DateTimeField(null=True, blank=True)
    aggregation_attempts = models.PositiveIntegerField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)
    paused_seconds = models.FloatField(
        default=0.0, help_text="time the job was paused while this round was open"
    )
    metrics = models.JSONField(default=dict, blank=True, help_text="sites' metrics combined by examples")
    failure_reason = models.TextField(blank=True)
    secure_aggregation = models.JSONField(
        default=dict, blank=True, help_text="the protocol's phase, config and site sets; {} without it"
    )

    class Meta:
        ordering = ["job_id", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="one_round_number_per_job")]

    @property
    def label(self) -> str:
        """How people read this round: by its number in the job, or as the final evaluation."""
        return "the final evaluation" if self.kind == RoundKind.EVALUATE else f"round {self.number}"

    def audit_details(self) -> dict[str, object]:
        """The audit trail's name for this round (an evaluation's number is no training round)."""
        return {"final_evaluation": True} if self.kind == RoundKind.EVALUATE else {"round": self.number}

    def duration_seconds(self, now: datetime, job_paused_at: datetime | None) -> float:
        """From opening to closing (or ``now`` while open), less the time the job was paused."""
        end = self.closed_at or now
        ongoing = (now - job_paused_at).total_seconds() if job_paused_at and not self.closed_at else 0.0
        return max((end - self.opened_at).total_seconds() - self.paused_seconds - ongoing, 0.0)

    def __str__(self) -> str:
        return f"round {self.number} of job {self.job_id}"


class ModelVersion(models.Model):
    """A global model, content-addressed: the blob's name is its SHA-256."""

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="model_versions")
    number = models.PositiveIntegerField(help_text="0 is the initial model; n is made by round n")
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveBigIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    made_by_round = models.OneToOneField(
        Round, null=True, blank=True, on_delete=models.PROTECT, related_name="result_version"
    )
    server_state_sha256 = models.CharField(max_length=64, blank=True, help_text="server optimizer state blob")
    provenance = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="one_version_number_per_job")]

    def __str__(self) -> str:
        return f"model {self.number} of job {self.job_id} ({self.sha256[:12]})"


class Update(models.Model):
    """One institution's contribution to one round: unique, so a retry is counted once."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="updates")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    credential = models.ForeignKey("institutions.AgentCredential", on_delete=models.PROTECT, related_name="+")
    num_examples = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="empty for evaluation results")
    size = models.PositiveBigIntegerField(default=0)
    dp_steps = models.JSONField(
        default=dict,
        blank=True,
        help_text="sample-level DP: noise_multiplier, sampling_rate, steps of the round",
    )
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round_id", "institution__name"]
        constraints = [
            models.UniqueConstraint(fields=["round", "institution"], name="one_update_per_site_and_round")
        ]


class Refusal(models.Model):
    """A site's agent refused a job under its local policy."""

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="refusals")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "institution"], name="one_refusal_per_site_and_job")
        ]


class PrivacySpend(models.Model):
    """The privacy one institution has spent in one job: one row of its privacy ledger.

    ``events`` are the DP mechanisms applied to the institution's data, in order, as
    ``[noise_multiplier, sampling_rate, steps]``; ``epsilon`` is their composition at
    ``delta`` (federation.privacy.accounting), recomputed whenever an event is added.
    """

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="privacy_spends")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    level = models.CharField(max_length=10, help_text="client or sample")
    epsilon = models.FloatField(default=0.0)
    delta = models.FloatField()
    rounds = models.PositiveIntegerField(default=0)
    events = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["institution_id", "job_id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "institution"], name="one_privacy_spend_per_site_and_job")
        ]


class SecAggMessageKind(models.TextChoices):
    KEYS = "keys"
    SHARES = "shares"
    UNMASKING = "unmasking"


class SecAggMessage(models.Model):
    """One site's message in one phase of a secure-aggregation round (docs/privacy.md).

    Public keys, share bundles encrypted for other sites, or the shares that unmask the
    sum: nothing here reveals a site's update. Unique, so a retry is counted once.
    """

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="secagg_messages")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=SecAggMessageKind.choices)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round_id", "kind", "institution_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["round", "institution", "kind"], name="one_secagg_message_per_site_round_kind"
            )
        ]
