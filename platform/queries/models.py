"""Federated queries: a coordinator's question about a study's data (statistics, survival
curves, the evaluation of model versions), each site's data owner's decision about it, and
each site's answer (counts and sums, never rows; ``federation.analytics.queries``)."""

from django.db import models

from studies.models import Decision


class QueryState(models.TextChoices):
    #: Awaiting the data owners' decisions and the agents' answers.
    OPEN = "open"
    COMPLETE = "complete"
    FAILED = "failed"


class Query(models.Model):
    study = models.ForeignKey("studies.Study", on_delete=models.CASCADE, related_name="queries")
    #: ``federation.analytics.queries.Query.to_json()``, checked against the study's schema.
    spec = models.JSONField()
    #: The study's data schema when the query was asked: every site reads the same columns
    #: and levels, whatever a later data agreement widens.
    data_schema = models.JSONField()
    title = models.CharField(max_length=300)
    state = models.CharField(max_length=10, choices=QueryState.choices, default=QueryState.OPEN)
    #: Summed so that the server sees only the total: ``phase`` is then "keys", then "mask".
    secure_aggregation = models.BooleanField(default=False)
    phase = models.CharField(max_length=10, blank=True)
    requested_by = models.CharField(max_length=200)
    requested_at = models.DateTimeField(auto_now_add=True)
    deadline_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Why it failed: a decline, a refusal with its reason, or answers that do not combine.
    reason = models.TextField(blank=True)
    #: The combined result (and, in the clear, each site's), once every site has answered.
    result = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "queries"

    def __str__(self) -> str:
        return f"query {self.pk}: {self.title}"


class QuerySite(models.Model):
    """One site's part in a query: its data owner's decision, then its agent's answer."""

    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="sites")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices, default=Decision.PENDING)
    decided_by = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    answer = models.JSONField(null=True, blank=True)
    refusal = models.TextField(blank=True)
    #: Under secure aggregation: the site's key, its minimum cell count, then its masked vector.
    public_key = models.CharField(max_length=100, blank=True)
    min_count = models.PositiveIntegerField(null=True, blank=True)
    masked = models.TextField(blank=True)
    #: Beside a secure evaluation's masked counts: the site's own figures (scalars only).
    site_metrics = models.JSONField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["query", "institution"], name="one_query_site")]
        ordering = ["institution__name"]


class QuerySpend(models.Model):
    """The epsilon one site spent answering one noised query: a row of its privacy ledger."""

    query = models.ForeignKey(Query, on_delete=models.PROTECT, related_name="spends")
    institution = models.ForeignKey("institutions.Institution", on_delete=models.PROTECT, related_name="+")
    epsilon = models.FloatField()
    spent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["query", "institution"], name="one_query_spend")]
        ordering = ["institution_id", "query_id"]
