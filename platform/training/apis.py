"""Coordinator API: jobs, their control, their progress and their global models."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from fedplatform.api_base import ApiView, error_responses, json_error_responses, request_actor, request_scope
from fedplatform.errors import TooLarge
from fedplatform.serializers import MAX_ID, InstitutionRefSerializer
from institutions.selectors import institution_get
from studies.models import Decision, Study
from training import selectors, services
from training.models import Job, JobState, ModelVersion, RoundKind, RoundState

TAGS = ["jobs"]


class StudyRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()

    class Meta:
        ref_name = "StudyRef"


class JobOutputSerializer(serializers.Serializer):
    """A job (the same representation for list, detail, create and each state change)."""

    id = serializers.IntegerField()
    study = StudyRefSerializer()
    state = serializers.ChoiceField(choices=JobState.choices)
    num_rounds = serializers.IntegerField()
    min_updates = serializers.IntegerField()
    round_deadline_seconds = serializers.IntegerField()
    max_deadline_extensions = serializers.IntegerField()
    current_round = serializers.IntegerField(allow_null=True, help_text="number of the latest round opened")
    failure_reason = serializers.CharField()
    privacy = serializers.DictField(
        source="plan.privacy.to_json", help_text="the study's privacy settings with this job's noise resolved"
    )
    training_stopped_after = serializers.IntegerField(
        allow_null=True,
        help_text="last training round when training ended early (the privacy budget, or early stopping)",
    )
    early_stopping_rounds = serializers.IntegerField(
        allow_null=True, help_text="rounds without a better validation loss before training ends; null: never"
    )
    best_version = serializers.SerializerMethodField(
        help_text="number of the model version with the lowest validation loss the sites measured"
    )
    launch_warnings = serializers.SerializerMethodField(
        help_text="before a job starts: each site whose reported policy will refuse it, and the rule"
    )
    epsilon_spent = serializers.SerializerMethodField(
        help_text="the most any site has spent of its privacy in this job; null without DP"
    )
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "Job"

    def get_epsilon_spent(self, job: Job) -> float | None:
        return selectors.job_epsilon_spent(job=job)

    def get_launch_warnings(self, job: Job) -> list[dict[str, str]]:
        if job.state != JobState.DRAFT:
            return []
        return [
            {"institution": w.institution, "reason": w.reason} for w in selectors.job_launch_warnings(job=job)
        ]

    def get_best_version(self, job: Job) -> int | None:
        best = selectors.best_model_version(job=job)
        return None if best is None else best.number


class JobListApi(ApiView):
    class FilterSerializer(serializers.Serializer):
        study = serializers.IntegerField(
            min_value=1, max_value=MAX_ID, required=False, help_text="only this study's jobs"
        )
        state = serializers.ChoiceField(choices=JobState.choices, required=False)

        class Meta:
            ref_name = "JobFilter"

    @extend_schema(
        tags=TAGS,
        parameters=[FilterSerializer],
        responses={200: JobOutputSerializer(many=True), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        """The jobs this account may see (a data owner: those of their institution's studies)."""
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.job_list(
            scope=request_scope(request),
            study_id=filters.validated_data.get("study"),
            state=filters.validated_data.get("state"),
        )
        return self.paginated_response(queryset=queryset, serializer_class=JobOutputSerializer)


class JobCreateApi(ApiView):
    class InputSerializer(serializers.Serializer):
        study = serializers.PrimaryKeyRelatedField(queryset=Study.objects.all())
        num_rounds = serializers.IntegerField(min_value=1, max_value=services.MAX_ROUNDS)
        min_updates = serializers.IntegerField(min_value=1, help_text="fewest updates a round may close with")
        round_deadline_seconds = serializers.IntegerField(
            min_value=1, max_value=services.MAX_DEADLINE_SECONDS, default=600
        )
        max_deadline_extensions = serializers.IntegerField(min_value=0, max_value=100, default=1)
        early_stopping_rounds = serializers.IntegerField(
            min_value=1,
            max_value=services.MAX_ROUNDS,
            required=False,
            allow_null=True,
            default=None,
            help_text="end training once the sites' validation loss has not improved for this many rounds",
        )

        class Meta:
            ref_name = "JobCreate"

    @extend_schema(
        tags=TAGS,
        request=InputSerializer,
        responses={201: JobOutputSerializer, **error_responses(400, 401, 403)},
    )
    def post(self, request: Request) -> Response:
        """Create a draft job of a study (coordinators)."""
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.job_create(**serializer.validated_data, actor=request_actor(request))
        job = selectors.job_get(scope=request_scope(request), job_id=job.pk)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobListCreateApi(JobListApi, JobCreateApi):
    """``jobs/`` answers GET (list) and POST (create): two operations, one route."""


class JobDetailApi(ApiView):
    @extend_schema(tags=TAGS, responses={200: JobOutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, job_id: int) -> Response:
        """One job."""
        job = selectors.job_get(scope=request_scope(request), job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class _JobTransitionApi(ApiView):
    """One state change of a job; each subclass is one operation calling one service."""

    def transition(self, *, job_id: int, actor: str) -> Job:
        raise NotImplementedError

    @extend_schema(
        tags=TAGS, request=None, responses={200: JobOutputSerializer, **error_responses(401, 403, 404, 409)}
    )
    def post(self, request: Request, job_id: int) -> Response:
        """Change the job's state (coordinators)."""
        scope = request_scope(request)
        job = selectors.job_get(scope=scope, job_id=job_id)
        self.transition(job_id=job.pk, actor=request_actor(request))
        return Response(JobOutputSerializer(selectors.job_get(scope=scope, job_id=job.pk)).data)


@extend_schema_view(
    post=extend_schema(
        description="Start a draft job (coordinators): write the initial model and open round 1. "
        "Every site must have approved the study; 409 `not_approved` names those who have not."
    )
)
class JobStartApi(_JobTransitionApi):
    def transition(self, *, job_id: int, actor: str) -> Job:
        return services.job_start(job_id=job_id, actor=actor)


@extend_schema_view(
    post=extend_schema(description="Pause a running job (coordinators); sites get no new work.")
)
class JobPauseApi(_JobTransitionApi):
    def transition(self, *, job_id: int, actor: str) -> Job:
        return services.job_pause(job_id=job_id, actor=actor)


@extend_schema_view(
    post=extend_schema(
        description="Resume a paused job (coordinators); the open round gets a fresh deadline."
    )
)
class JobResumeApi(_JobTransitionApi):
    def transition(self, *, job_id: int, actor: str) -> Job:
        return services.job_resume(job_id=job_id, actor=actor)


@extend_schema_view(
    post=extend_schema(description="Cancel a draft, running or paused job (coordinators); open rounds fail.")
)
class JobCancelApi(_JobTransitionApi):
    def transition(self, *, job_id: int, actor: str) -> Job:
        return services.job_cancel(job_id=job_id, actor=actor)


class RoundProgressSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=RoundKind.choices)
    state = serializers.ChoiceField(choices=RoundState.choices)
    expected_updates = serializers.IntegerField()
    received = serializers.IntegerField(help_text="answers received so far")
    opened_at = serializers.DateTimeField()
    deadline_at = serializers.DateTimeField()
    last_update_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(
        help_text="from opening to closing, or until now while open, less the time the job was paused"
    )
    metrics = serializers.DictField(child=serializers.FloatField())
    failure_reason = serializers.CharField()
    bytes_up = serializers.IntegerField(help_text="bytes the sites uploaded: their updates")
    bytes_down = serializers.IntegerField(
        help_text="bytes the answering sites downloaded: the round's global model (for a text model "
        "its adapters and head), once each"
    )

    class Meta:
        ref_name = "RoundProgress"


class SiteProgressSerializer(serializers.Serializer):
    institution = InstitutionRefSerializer()
    decision = serializers.ChoiceField(choices=Decision.choices)
    refused = serializers.BooleanField(help_text="the site's agent refused the job under its local policy")
    refusal_reason = serializers.CharField()
    updates_sent = serializers.IntegerField(help_text="training updates sent")
    last_update_at = serializers.DateTimeField(allow_null=True, help_text="time of the latest answer")
    latest_metrics = serializers.DictField(child=serializers.FloatField(), help_text="of the latest answer")
    agent_online = serializers.BooleanField(help_text="an active credential was seen in the last 60 seconds")
    agent_last_seen_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "SiteProgress"


class JobProgressApi(ApiView):
    class OutputSerializer(serializers.Serializer):
        job = JobOutputSerializer()
        rounds = RoundProgressSerializer(many=True)
        sites = SiteProgressSerializer(many=True, help_text="every site; a data owner sees only their own")
        full_model_bytes = serializers.IntegerField(
            allow_null=True,
            help_text="a text model's whole size in float32 (only adapters travel); null for other models",
        )

        class Meta:
            ref_name = "JobProgress"

    @extend_schema(tags=TAGS, responses={200: OutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, job_id: int) -> Response:
        """The job's rounds and each site's part in them."""
        scope = request_scope(request)
        job = selectors.job_get(scope=scope, job_id=job_id)
        return Response(self.OutputSerializer(selectors.job_progress(scope=scope, job=job)).data)


class ModelVersionOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="for models/<id>/download/")
    number = serializers.IntegerField(help_text="0 is the initial model; n is made by round n")
    sha256 = serializers.CharField()
    size = serializers.IntegerField(help_text="bytes")
    parent_number = serializers.IntegerField(source="parent.number", allow_null=True)
    made_by_round_number = serializers.IntegerField(source="made_by_round.number", allow_null=True)
    provenance = serializers.SerializerMethodField()
    metrics = serializers.DictField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ModelVersion"

    @extend_schema_field(serializers.DictField())
    def get_provenance(self, version: ModelVersion) -> dict[str, object]:
        scope = self.context.get("scope")
        if scope is None:  # never fall back to the unfiltered provenance
            raise ImproperlyConfigured("ModelVersionOutputSerializer needs the request's scope")
        return selectors.provenance_visible(scope=scope, version=version)


class JobModelListApi(ApiView):
    @extend_schema(
        tags=TAGS, responses={200: ModelVersionOutputSerializer(many=True), **error_responses(401, 404)}
    )
    def get(self, request: Request, job_id: int) -> Response:
        """The job's global model versions, oldest first."""
        scope = request_scope(request)
        job = selectors.job_get(scope=scope, job_id=job_id)
        queryset = selectors.model_version_list(job=job)
        return self.paginated_response(
            queryset=queryset, serializer_class=ModelVersionOutputSerializer, context={"scope": scope}
        )


#: Room a multipart body needs beyond the model file: the name, part headers and boundaries.
UPLOAD_ENVELOPE_BYTES = 64 * 1024


class JobModelUploadApi(ApiView):
    """A model trained elsewhere, in the job's format, added as its next version (coordinators)."""

    parser_classes = (MultiPartParser,)  # type: ignore[assignment]

    class InputSerializer(serializers.Serializer):
        tensors = serializers.FileField(help_text="the model as a safetensors file in the job's format")
        name = serializers.CharField(max_length=200, help_text="what the model is, for people")

        class Meta:
            ref_name = "ModelUpload"

    @extend_schema(
        tags=TAGS,
        request={"multipart/form-data": InputSerializer},
        responses={201: ModelVersionOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)},
    )
    def post(self, request: Request, job_id: int) -> Response:
        """Upload a model in the job's format (tensor names, shapes, dtypes) to a finished job:
        it becomes the job's next version, which the sites can evaluate (docs/analytics.md)."""
        scope = request_scope(request)
        job = selectors.job_get(scope=scope, job_id=job_id)
        limit = services.model_upload_limit(job=job)
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit + UPLOAD_ENVELOPE_BYTES:  # before the body is read
            raise TooLarge(
                f"the request body is {int(length)} bytes; a model of this job takes at most {limit}"
            )
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["tensors"]
        if upload.size > limit:
            raise TooLarge(f"the model is {upload.size} bytes; this job's format takes at most {limit}")
        version = services.model_version_upload(
            job_id=job.pk,
            data=upload.read(),
            name=serializer.validated_data["name"],
            actor=request_actor(request),
        )
        return Response(
            ModelVersionOutputSerializer(version, context={"scope": scope}).data,
            status=status.HTTP_201_CREATED,
        )


class OctetStreamRenderer(BaseRenderer):
    """Lets a client ask for ``application/octet-stream``; errors are still JSON."""

    media_type = "application/octet-stream"
    format = "bin"
    charset = None
    render_style = "binary"

    def render(
        self,
        data: object,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, object] | None = None,
    ) -> bytes:
        if isinstance(data, bytes):
            return data
        response = (renderer_context or {}).get("response")
        if isinstance(response, Response):
            response["Content-Type"] = "application/json"
        return json.dumps(data).encode()


class ModelDownloadApi(ApiView):
    renderer_classes = (JSONRenderer, OctetStreamRenderer)

    @extend_schema(
        tags=TAGS,
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                response=OpenApiTypes.BINARY, description="the model's safetensors bytes, checked on read"
            ),
            **json_error_responses(401, 404),
        },
    )
    def get(self, request: Request, version_id: int) -> FileResponse:
        """Download a global model's safetensors file; its checksum is verified on read."""
        version, data = services.model_version_download(  # BlobCorrupt if the bytes do not match
            scope=request_scope(request), version_id=version_id, actor=request_actor(request)
        )
        response = FileResponse(
            io.BytesIO(data),
            as_attachment=True,
            content_type="application/octet-stream",
            filename=f"model-{version.job_id}-{version.number}-{version.sha256[:12]}.safetensors",
        )
        response["X-Content-SHA256"] = version.sha256
        return response


class ZipRenderer(OctetStreamRenderer):
    """Lets a client ask for ``application/zip``; errors are still JSON."""

    media_type = "application/zip"
    format = "zip"


class ModelBundleApi(ApiView):
    renderer_classes = (JSONRenderer, OctetStreamRenderer, ZipRenderer)

    @extend_schema(
        tags=TAGS,
        responses={
            (200, "application/zip"): OpenApiResponse(
                response=OpenApiTypes.BINARY,
                description="the model bundle: weights, model.json (schema, scaling, class map), "
                "provenance, metrics and a model card (docs/api.md)",
            ),
            **json_error_responses(401, 404),
        },
    )
    def get(self, request: Request, version_id: int) -> FileResponse:
        """Download a model version as one zip to hand over (``python -m federation.predict``)."""
        version, data = services.model_bundle_download(
            scope=request_scope(request), version_id=version_id, actor=request_actor(request)
        )
        return FileResponse(
            io.BytesIO(data),
            as_attachment=True,
            content_type="application/zip",
            filename=f"model-{version.job_id}-{version.number}-bundle.zip",
        )


class PrivacySpendOutputSerializer(serializers.Serializer):
    job = serializers.IntegerField(source="job_id")
    study = StudyRefSerializer(source="job.study")
    level = serializers.CharField(help_text="client (DP-FedAvg) or sample (DP-SGD)")
    epsilon = serializers.FloatField()
    delta = serializers.FloatField()
    rounds = serializers.IntegerField(help_text="rounds in which this institution's data was used")
    updated_at = serializers.DateTimeField()

    class Meta:
        ref_name = "PrivacySpend"


class QuerySpendOutputSerializer(serializers.Serializer):
    query = serializers.IntegerField(source="query_id")
    study = StudyRefSerializer(source="query.study")
    title = serializers.CharField(source="query.title")
    epsilon = serializers.FloatField(help_text="Laplace noise on the query's count cells: pure epsilon-DP")
    spent_at = serializers.DateTimeField()

    class Meta:
        ref_name = "QuerySpend"


class PrivacyLedgerOutputSerializer(serializers.Serializer):
    institution = InstitutionRefSerializer()
    total_epsilon = serializers.FloatField(
        help_text="sum over jobs and noised queries (basic composition): an upper bound"
    )
    total_delta = serializers.FloatField()
    entries = PrivacySpendOutputSerializer(many=True)
    query_entries = QuerySpendOutputSerializer(many=True, help_text="noised federated queries answered")

    class Meta:
        ref_name = "PrivacyLedger"


class PrivacyLedgerApi(ApiView):
    @extend_schema(
        tags=["institutions"], responses={200: PrivacyLedgerOutputSerializer, **error_responses(401, 404)}
    )
    def get(self, request: Request, institution_id: int) -> Response:
        """The epsilon an institution has spent, job by job across all its studies, and in total."""
        institution = institution_get(scope=request_scope(request), institution_id=institution_id)
        ledger = selectors.privacy_ledger(institution=institution)
        return Response(PrivacyLedgerOutputSerializer(ledger).data)
