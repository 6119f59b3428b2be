"""The agent API (docs/api.md): thin views that validate, call a service and serialize."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi import long_poll, selectors
from agentapi.authentication import AgentAuthentication, IsAgent, credential_of
from federation.errors import ConfigurationError
from federation.metric_reports import MAX_NUM_EXAMPLES, check_num_examples, check_reported_metrics
from federation.types import ModelSpec
from federation.wire import max_update_bytes
from fedplatform.client_address import ClientAddressThrottle
from fedplatform.errors import InvalidInput, NotFound, TooLarge
from fedplatform.parsers import BoundedJSONParser, loads_checked
from fedplatform.serializers import MAX_ID, ErrorResponseSerializer
from institutions import services as institution_services
from institutions.models import AgentCredential
from queries import services as query_services
from studies import agreement
from training import secure_services
from training import services as training_services
from training.blobs import blob_store

ERRORS = {code: OpenApiResponse(ErrorResponseSerializer) for code in (400, 401, 403, 404, 409)}
#: Extra room a multipart body needs beyond its tensors: the meta field (at most 100,000
#: characters, 4 bytes each in UTF-8), part headers and boundaries.
MULTIPART_ALLOWANCE = 512 * 1024


class AgentView(APIView):
    authentication_classes = [AgentAuthentication]
    permission_classes = [IsAgent]
    parser_classes = [BoundedJSONParser]


class EnrollApi(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    parser_classes = [BoundedJSONParser]
    throttle_classes = [ClientAddressThrottle]
    throttle_scope = "enroll"

    class AgentEnrollInputSerializer(serializers.Serializer):
        token = serializers.CharField(max_length=200)
        agent_version = serializers.CharField(max_length=50, default="", allow_blank=True)
        hostname = serializers.CharField(max_length=200, default="", allow_blank=True)

    class AgentEnrollOutputSerializer(serializers.Serializer):
        institution = serializers.DictField()
        credential_id = serializers.IntegerField()
        key = serializers.CharField()

    @extend_schema(
        request=AgentEnrollInputSerializer,
        responses={
            201: AgentEnrollOutputSerializer,
            **ERRORS,
            429: OpenApiResponse(ErrorResponseSerializer, description="too many attempts: slow down"),
        },
        tags=["agent"],
    )
    def post(self, request: Request) -> Response:
        data = self.AgentEnrollInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        enrollment = institution_services.agent_enroll(**data.validated_data)
        institution = enrollment.credential.institution
        body = {
            "institution": {"id": institution.pk, "name": institution.name},
            "credential_id": enrollment.credential.pk,
            "key": enrollment.key,
        }
        return Response(self.AgentEnrollOutputSerializer(body).data, status=status.HTTP_201_CREATED)


class HeartbeatApi(AgentView):
    class AgentHeartbeatInputSerializer(serializers.Serializer):
        agent_version = serializers.CharField(max_length=50, default="", allow_blank=True)
        policy = serializers.DictField(
            required=False, help_text="the limits of the site's policy (federation.policy_limits)"
        )

    class AgentHeartbeatOutputSerializer(serializers.Serializer):
        server_time = serializers.DateTimeField()

    @extend_schema(
        request=AgentHeartbeatInputSerializer,
        responses={200: AgentHeartbeatOutputSerializer, **ERRORS},
        tags=["agent"],
    )
    def post(self, request: Request) -> Response:
        from django.utils import timezone

        data = self.AgentHeartbeatInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        institution_services.credential_touch(credential=credential_of(request), **data.validated_data)
        return Response(self.AgentHeartbeatOutputSerializer({"server_time": timezone.now()}).data)


class MeApi(AgentView):
    class AgentMeOutputSerializer(serializers.Serializer):
        institution = serializers.DictField()
        credential_id = serializers.IntegerField()
        studies = serializers.ListField(child=serializers.DictField())
        jobs = serializers.ListField(child=serializers.DictField())

    @extend_schema(responses={200: AgentMeOutputSerializer, **ERRORS}, tags=["agent"])
    def get(self, request: Request) -> Response:
        return Response(
            self.AgentMeOutputSerializer(selectors.agent_overview(credential=credential_of(request))).data
        )


class WorkApi(AgentView):
    """Long poll: answers as soon as there is work, or with no task after ``wait`` seconds."""

    class AgentWorkOutputSerializer(serializers.Serializer):
        task = serializers.DictField(allow_null=True)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": settings.FEDHEALTH_LONG_POLL_MAX_SECONDS},
                description="seconds to wait for work (default 0: answer at once)",
            )
        ],
        responses={
            200: AgentWorkOutputSerializer,
            **ERRORS,
            429: OpenApiResponse(
                ErrorResponseSerializer,
                description="too many long polls waiting (this credential's, or this server's): "
                "ask again after Retry-After seconds",
            ),
        },
        tags=["agent"],
    )
    def get(self, request: Request) -> Response:
        wait = _bounded_wait(request.query_params.get("wait", "0"))
        credential = credential_of(request)
        institution_services.credential_touch(credential=credential)
        return Response({"task": long_poll.work_wait(credential=credential, wait=wait)})


def _bounded_wait(raw: str) -> float:
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidInput("wait must be a number of seconds") from None
    if not 0 <= wait <= settings.FEDHEALTH_LONG_POLL_MAX_SECONDS:
        raise InvalidInput(f"wait must lie between 0 and {settings.FEDHEALTH_LONG_POLL_MAX_SECONDS} seconds")
    return wait


class ModelDownloadApi(AgentView):
    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="safetensors bytes"),
            **ERRORS,
        },
        tags=["agent"],
    )
    def get(self, request: Request, version_id: int) -> FileResponse:
        version = selectors.model_version_for_agent(credential=credential_of(request), version_id=version_id)
        if version is None:
            raise NotFound("no such model version")
        response = FileResponse(
            iter([blob_store().read(version.sha256)]), content_type="application/octet-stream"
        )
        response["X-Content-SHA256"] = version.sha256
        response["Content-Length"] = str(version.size)
        return response


class DpStepsSerializer(serializers.Serializer):
    """What sample-level DP-SGD did to the site's data in this round, for the ledger."""

    noise_multiplier = serializers.FloatField(min_value=1e-6, max_value=1e6)
    sampling_rate = serializers.FloatField(min_value=1e-9, max_value=1.0)
    steps = serializers.IntegerField(min_value=1, max_value=100_000_000)


class NumExamplesField(serializers.IntegerField):
    """A site's example count: a JSON integer only (``"100"``, ``100.0`` and ``true`` are refused)."""

    def __init__(self) -> None:
        super().__init__(min_value=1, max_value=MAX_NUM_EXAMPLES)

    def to_internal_value(self, data: object) -> int:
        try:
            return check_num_examples(data)
        except ConfigurationError as error:
            raise serializers.ValidationError(str(error)) from None


class ReportedMetricsField(serializers.DictField):
    """A site's metrics: known names (``accuracy``, ``global_log_loss``, ...), each in its range."""

    def __init__(self, *, required: bool = True) -> None:
        if required:
            super().__init__(child=serializers.FloatField())
        else:
            super().__init__(child=serializers.FloatField(), default=dict)

    def to_internal_value(self, data: object) -> dict[str, float]:
        try:
            return check_reported_metrics(data)
        except ConfigurationError as error:
            raise serializers.ValidationError(str(error)) from None


class UpdateMetaSerializer(serializers.Serializer):
    num_examples = NumExamplesField()
    dp_steps = DpStepsSerializer(
        required=False, allow_null=True, default=None, help_text="required with sample-level DP, else absent"
    )
    metrics = ReportedMetricsField(required=False)
    base_model_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$")
    job_id = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    round_number = serializers.IntegerField(min_value=1, max_value=MAX_ID)


class SubmitOutputSerializer(serializers.Serializer):
    update_id = serializers.IntegerField()
    sha256 = serializers.CharField(allow_blank=True)
    duplicate = serializers.BooleanField()


UPLOAD_RESPONSES = {
    200: SubmitOutputSerializer,
    201: SubmitOutputSerializer,
    413: OpenApiResponse(ErrorResponseSerializer),
    **ERRORS,
}


class UploadView(AgentView):
    """A multipart upload of tensors whose size follows from the round's model."""

    parser_classes = [MultiPartParser]
    #: The largest upload is ``size_factor`` times the model's largest update plus ``extra_bytes``.
    size_factor = 1
    extra_bytes = 0

    @classmethod
    def tensors_limit(cls, update_bytes: int) -> int:
        """The largest tensors file for a model whose largest update is ``update_bytes``."""
        return cls.size_factor * update_bytes + cls.extra_bytes

    @classmethod
    def largest_body(cls, spec: ModelSpec) -> int:
        """The largest request body this route takes for a model of ``spec``, envelope included
        (the figure deploy/nginx/fedhealth.conf must allow on this route)."""
        return cls.tensors_limit(max_update_bytes(spec)) + MULTIPART_ALLOWANCE


class UpdateUploadApi(UploadView):
    class AgentUpdateUploadInputSerializer(serializers.Serializer):
        meta = serializers.CharField(
            help_text="JSON object: num_examples, metrics, base_model_sha256, job_id, round_number, dp_steps",
            max_length=100_000,
        )
        tensors = serializers.FileField(help_text="the update as a safetensors file")

    @extend_schema(
        request={"multipart/form-data": AgentUpdateUploadInputSerializer},
        responses=UPLOAD_RESPONSES,
        tags=["agent"],
    )
    def post(self, request: Request, round_id: int) -> Response:
        upload = _received_upload(request, round_id, self, self.AgentUpdateUploadInputSerializer)
        result = training_services.update_submit(
            round_id=round_id, credential=upload.credential, meta=_parse_meta(upload.meta), data=upload.data
        )
        return _submit_response(result)


@dataclass(frozen=True)
class _Upload:
    credential: AgentCredential
    meta: str
    data: bytes


def _received_upload(
    request: Request, round_id: int, view: UploadView, serializer: type[serializers.Serializer]
) -> _Upload:
    """A multipart upload's meta and bytes, every size checked before the body is read:
    the round's limit is the view's ``size_factor`` times its model's largest update plus
    its ``extra_bytes``."""
    _refuse_oversized(request, settings.FEDHEALTH_MAX_UPLOAD_BYTES)
    credential = credential_of(request)
    limit = view.tensors_limit(training_services.update_size_limit(round_id=round_id, credential=credential))
    _refuse_oversized(request, limit + MULTIPART_ALLOWANCE)  # before the body is parsed
    data = serializer(data=request.data)
    data.is_valid(raise_exception=True)
    upload = data.validated_data["tensors"]
    if upload.size > limit:  # before a byte of it is read into memory
        raise TooLarge(f"the upload is {upload.size} bytes; this round takes at most {limit}")
    return _Upload(credential, data.validated_data["meta"], upload.read())


def _refuse_oversized(request: Request, limit: int) -> None:
    """Refuse a body whose declared length exceeds ``limit``, before reading any of it."""
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"the request body is {int(length)} bytes; at most {limit} are accepted here")


def _parse_meta(
    raw: str, *, serializer: type[serializers.Serializer] | None = None, **fixed: int
) -> training_services.UpdateMeta:
    try:
        loaded = loads_checked(raw, what="meta")
    except ParseError as error:
        raise InvalidInput(str(error.detail)) from None
    if not isinstance(loaded, dict):
        raise InvalidInput("meta must be a JSON object")
    meta = (serializer or UpdateMetaSerializer)(data=loaded)
    meta.is_valid(raise_exception=True)
    values = {**dict(meta.validated_data), **fixed}
    dp_steps = values.pop("dp_steps", None)
    return training_services.UpdateMeta(**values, dp_steps=dict(dp_steps) if dp_steps else None)


def _submit_response(result: training_services.SubmitResult) -> Response:
    body = {"update_id": result.update.pk, "sha256": result.update.sha256, "duplicate": result.duplicate}
    code = status.HTTP_200_OK if result.duplicate else status.HTTP_201_CREATED
    return Response(SubmitOutputSerializer(body).data, status=code)


class SecAggMessageOutputSerializer(serializers.Serializer):
    duplicate = serializers.BooleanField(help_text="the same message had arrived before")


def _message_response(result: secure_services.MessageResult) -> Response:
    code = status.HTTP_200_OK if result.duplicate else status.HTTP_201_CREATED
    return Response(SecAggMessageOutputSerializer({"duplicate": result.duplicate}).data, status=code)


SECAGG_RESPONSES = {
    200: SecAggMessageOutputSerializer,
    201: SecAggMessageOutputSerializer,
    **ERRORS,
}


class SecAggKeysApi(AgentView):
    """Secure aggregation, advertise phase: this round's two public keys (docs/privacy.md)."""

    class AgentSecAggKeysInputSerializer(serializers.Serializer):
        cipher_public_key = serializers.CharField(max_length=100, help_text="base64 X25519 public key")
        mask_public_key = serializers.CharField(max_length=100, help_text="base64 X25519 public key")

    @extend_schema(request=AgentSecAggKeysInputSerializer, responses=SECAGG_RESPONSES, tags=["agent"])
    def post(self, request: Request, round_id: int) -> Response:
        data = self.AgentSecAggKeysInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = secure_services.secagg_keys_submit(
            round_id=round_id, credential=credential_of(request), keys=data.validated_data
        )
        return _message_response(result)


class SecAggSharesApi(AgentView):
    """Secure aggregation, share phase: one encrypted share bundle for each other site."""

    class AgentSecAggSharesInputSerializer(serializers.Serializer):
        shares = serializers.DictField(
            child=serializers.CharField(max_length=1000), help_text="site id -> base64 AES-GCM bundle"
        )

        def validate_shares(self, shares: dict[str, str]) -> dict[str, str]:
            if len(shares) > 10_000:
                raise serializers.ValidationError("too many share bundles")
            return shares

    @extend_schema(request=AgentSecAggSharesInputSerializer, responses=SECAGG_RESPONSES, tags=["agent"])
    def post(self, request: Request, round_id: int) -> Response:
        data = self.AgentSecAggSharesInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = secure_services.secagg_shares_submit(
            round_id=round_id, credential=credential_of(request), shares=data.validated_data["shares"]
        )
        return _message_response(result)


class SecAggUnmaskingApi(AgentView):
    """Secure aggregation, unmask phase: shares of survivors' self masks and dropped sites' keys."""

    class AgentSecAggUnmaskingInputSerializer(serializers.Serializer):
        self_mask_shares = serializers.DictField(child=serializers.CharField(max_length=200), default=dict)
        mask_key_shares = serializers.DictField(child=serializers.CharField(max_length=200), default=dict)

    @extend_schema(request=AgentSecAggUnmaskingInputSerializer, responses=SECAGG_RESPONSES, tags=["agent"])
    def post(self, request: Request, round_id: int) -> Response:
        data = self.AgentSecAggUnmaskingInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = secure_services.secagg_unmasking_submit(
            round_id=round_id, credential=credential_of(request), answer=data.validated_data
        )
        return _message_response(result)


class MaskedMetaSerializer(UpdateMetaSerializer):
    """The meta of a masked update: as a plain update's, without num_examples (masked too)."""

    num_examples = None  # type: ignore[assignment]


class SecAggMaskedUploadApi(UploadView):
    """Secure aggregation, mask phase: the site's masked update (one uint64 tensor)."""

    # A masked update holds one uint64 per parameter: twice a float32 update.
    size_factor = 2
    extra_bytes = 4096

    class AgentSecAggMaskedInputSerializer(serializers.Serializer):
        meta = serializers.CharField(
            help_text="JSON object: metrics, base_model_sha256, job_id, round_number, dp_steps",
            max_length=100_000,
        )
        tensors = serializers.FileField(help_text='safetensors with one uint64 tensor "masked"')

    @extend_schema(
        request={"multipart/form-data": AgentSecAggMaskedInputSerializer},
        responses=UPLOAD_RESPONSES,
        tags=["agent"],
    )
    def post(self, request: Request, round_id: int) -> Response:
        upload = _received_upload(request, round_id, self, self.AgentSecAggMaskedInputSerializer)
        meta = _parse_meta(upload.meta, serializer=MaskedMetaSerializer, num_examples=1)
        result = secure_services.secagg_masked_submit(
            round_id=round_id, credential=upload.credential, meta=meta, data=upload.data
        )
        return _submit_response(result)


class EvaluationApi(AgentView):
    class AgentEvaluationInputSerializer(serializers.Serializer):
        num_examples = NumExamplesField()
        metrics = ReportedMetricsField()

    @extend_schema(
        request=AgentEvaluationInputSerializer,
        responses={200: SubmitOutputSerializer, 201: SubmitOutputSerializer, **ERRORS},
        tags=["agent"],
    )
    def post(self, request: Request, round_id: int) -> Response:
        data = self.AgentEvaluationInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = training_services.evaluation_submit(
            round_id=round_id, credential=credential_of(request), **data.validated_data
        )
        return _submit_response(result)


class RefuseApi(AgentView):
    class AgentRefuseInputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    class AgentRefuseOutputSerializer(serializers.Serializer):
        job_id = serializers.IntegerField()
        reason = serializers.CharField()

    @extend_schema(
        request=AgentRefuseInputSerializer,
        responses={200: AgentRefuseOutputSerializer, **ERRORS},
        tags=["agent"],
    )
    def post(self, request: Request, job_id: int) -> Response:
        data = self.AgentRefuseInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        refusal = training_services.job_refuse(
            job_id=job_id, credential=credential_of(request), reason=data.validated_data["reason"]
        )
        return Response(
            self.AgentRefuseOutputSerializer({"job_id": refusal.job_id, "reason": refusal.reason}).data
        )


class SummaryAnswerApi(AgentView):
    """This site's answer to a study's summary request: its aggregates, or its refusal."""

    class AgentSummaryInputSerializer(serializers.Serializer):
        summary = serializers.DictField(
            required=False,
            help_text='{"count": n, "numeric": {feature: {"sum", "sum_sq"}}, '
            '"categories": {feature: {value: rows}}}',
        )
        refused = serializers.CharField(required=False, max_length=2000, help_text="the reason to refuse")
        public_key = serializers.CharField(
            required=False, max_length=100, help_text="secure aggregation, keys step: base64 X25519 key"
        )
        masked = serializers.CharField(
            required=False, max_length=1_000_000, help_text="secure aggregation, mask step: base64 uint64s"
        )

        def validate(self, attrs: dict[str, object]) -> dict[str, object]:
            if len(attrs) != 1:
                raise serializers.ValidationError("send one of summary, public_key, masked or refused")
            return attrs

    class AgentSummaryOutputSerializer(serializers.Serializer):
        request_id = serializers.IntegerField()
        refused = serializers.BooleanField()

    @extend_schema(
        request=AgentSummaryInputSerializer,
        responses={200: AgentSummaryOutputSerializer, **ERRORS},
        tags=["agent"],
    )
    def post(self, request: Request, request_id: int) -> Response:
        data = self.AgentSummaryInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answer = agreement.summary_answer_record(
            credential=credential_of(request), request_id=request_id, body=data.validated_data
        )
        return Response(
            self.AgentSummaryOutputSerializer(
                {"request_id": request_id, "refused": bool(answer.refusal)}
            ).data
        )


class QueryAnswerApi(AgentView):
    """This site's answer to a federated query its data owner approved, or its refusal."""

    class AgentQueryInputSerializer(serializers.Serializer):
        answer = serializers.DictField(
            required=False, help_text="the site's counts and sums (federation.analytics.queries.site_answer)"
        )
        refused = serializers.CharField(required=False, max_length=2000, help_text="the reason to refuse")
        public_key = serializers.CharField(
            required=False, max_length=100, help_text="secure aggregation, keys step: base64 X25519 key"
        )
        min_count = serializers.IntegerField(
            required=False,
            min_value=1,
            max_value=1_000_000,
            help_text="keys step: the site's minimum cell count",
        )
        masked = serializers.CharField(
            required=False, max_length=10_000_000, help_text="secure aggregation, mask step: base64 uint64s"
        )
        metrics = serializers.DictField(
            required=False,
            help_text="with an evaluation's masked counts: the site's own figures per version (scalars)",
        )

        def validate(self, attrs: dict[str, object]) -> dict[str, object]:
            steps = ({"answer"}, {"refused"}, {"public_key", "min_count"}, {"masked"}, {"masked", "metrics"})
            if set(attrs) not in steps:
                raise serializers.ValidationError(
                    "send answer, refused, masked (with metrics for an evaluation), "
                    "or public_key with min_count"
                )
            return attrs

    class AgentQueryOutputSerializer(serializers.Serializer):
        query_id = serializers.IntegerField()
        refused = serializers.BooleanField()

    @extend_schema(
        request=AgentQueryInputSerializer,
        responses={200: AgentQueryOutputSerializer, **ERRORS},
        tags=["agent"],
    )
    def post(self, request: Request, query_id: int) -> Response:
        data = self.AgentQueryInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        site = query_services.query_answer_record(
            credential=credential_of(request), query_id=query_id, body=data.validated_data
        )
        return Response(
            self.AgentQueryOutputSerializer({"query_id": query_id, "refused": bool(site.refusal)}).data
        )
