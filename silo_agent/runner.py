"""Carry out one task: policy check, model download, local training or evaluation, upload.

Only aggregates leave the site: the update's tensors, ``num_examples`` and metrics computed
over the site's validation rows. Every step is recorded in the :class:`StateStore` before
the next one starts, so a restart resumes where the agent stopped (see
:mod:`silo_agent.state` for the rules).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from federation.data import Dataset
from federation.data.text import TextDataset
from federation.errors import BaseModelError, FederationError
from federation.metrics import compute_metrics
from federation.models import AnyModelConfig, ModelAdapter, TrainConfig, build_model, model_config_from_json
from federation.models.base import MAX_SEED
from federation.models.lora import SiteModelOptions, TextModelConfig
from federation.models.pins import locate_base_model, verify_base_model
from federation.privacy.settings import PrivacySettings
from federation.types import ModelSpec, Weights
from federation.wire import deserialize_weights, max_update_bytes, serialize_weights, sha256_hex
from silo_agent.client import AgentClient, DownloadedModel
from silo_agent.config import Policy
from silo_agent.errors import ApiError, TaskError
from silo_agent.local_data import DataCache, PreparedData
from silo_agent.logs import log_context
from silo_agent.policy import check_task, needs_server_approvals
from silo_agent.privacy import DpSgdPlan, LocalLedger, dp_sgd_plan, filter_update
from silo_agent.queries import QueryAnswerer
from silo_agent.secure_round import SecureRound
from silo_agent.state import RoundState, StateStore, Step
from silo_agent.summaries import SummaryAnswerer
from silo_agent.tasks import (
    ModelVersionRef,
    QueryTask,
    StudySettings,
    SummaryTask,
    TaskKind,
    WorkTask,
    parse_any_task,
)

logger = logging.getLogger(__name__)


#: Answers that end this site's part in a secure-aggregation round. Not "job_not_running":
#: a paused job resumes, and the round's secrets are needed then.
ROUND_OVER_CODES = frozenset({"wrong_phase", "dropped", "round_closed"})


class TaskOutcome(enum.StrEnum):
    """How a task ended."""

    UPLOADED = "uploaded"
    EVALUATED = "evaluated"
    REFUSED = "refused"
    ALREADY_DONE = "already_done"
    #: One phase of a secure-aggregation round answered; the round continues.
    SECURE_STEP = "secure_step"
    #: A study's summary request answered (the data agreement).
    SUMMARISED = "summarised"
    #: A federated query (or one step of a secure one) answered.
    ANSWERED = "answered"


class ProgressStep(enum.StrEnum):
    """The visible steps of a task, reported to a :data:`ProgressCallback`."""

    DOWNLOADING = "downloading"
    TRAINING = "training"
    EVALUATING = "evaluating"
    UPLOADING = "uploading"


#: Receives each step as it starts, with a short description (sizes and counts only).
ProgressCallback = Callable[[ProgressStep, str], None]


def log_progress(step: ProgressStep, detail: str) -> None:
    logger.info("%s %s", step.value, detail)


def training_seed(study_seed: int, round_number: int, institution_id: int) -> int:
    """The seed of one site's local training in one round: repeatable, distinct per site and round."""
    return (study_seed * 1_000_003 + round_number * 1_009 + institution_id) % (MAX_SEED + 1)


class TaskRunner:
    """Handles the tasks of one enrolled institution."""

    def __init__(
        self,
        *,
        client: AgentClient,
        policy: Policy,
        institution_id: int,
        store: StateStore,
        data: DataCache,
        progress: ProgressCallback = log_progress,
        models: SiteModelOptions | None = None,
    ) -> None:
        self._client = client
        self._models = models or SiteModelOptions()
        self._policy = policy
        self._institution_id = institution_id
        self._store = store
        self._data = data
        self._progress = progress
        self._ledger = LocalLedger(store.directory)
        self._summaries = SummaryAnswerer(
            client=client, policy=policy, data=data, institution_id=institution_id, state_dir=store.directory
        )
        self._queries = QueryAnswerer(
            client=client,
            policy=policy,
            data=data,
            institution_id=institution_id,
            state_dir=store.directory,
            scorer=self._held_out_scores,
        )

    def handle(self, raw_task: Mapping[str, object]) -> TaskOutcome:
        """Carry out one task as returned by ``GET work``."""
        task = parse_any_task(raw_task)
        if isinstance(task, SummaryTask):
            return self._summarise(task)
        if isinstance(task, QueryTask):
            return self._answer_query(task)
        evaluation = task.kind is TaskKind.EVALUATE
        with log_context(job_id=task.job_id, round_number=task.round_number, final_evaluation=evaluation):
            logger.info("received a %s task", task.kind.value)
            try:
                return self._handle(task)
            except FederationError as error:
                raise TaskError(str(error)) from None

    def _summarise(self, task: SummaryTask) -> TaskOutcome:
        logger.info("received the summary request %d of study %r", task.request_id, task.study_name)
        try:
            refused = self._summaries.answer(task)
        except FederationError as error:
            raise TaskError(str(error)) from None
        return TaskOutcome.REFUSED if refused else TaskOutcome.SUMMARISED

    def _answer_query(self, task: QueryTask) -> TaskOutcome:
        logger.info("received query %d of study %r", task.query_id, task.study_name)
        try:
            refused = self._queries.answer(task)
        except FederationError as error:
            raise TaskError(str(error)) from None
        return TaskOutcome.REFUSED if refused else TaskOutcome.ANSWERED

    def _held_out_scores(
        self, study: StudySettings, reference: ModelVersionRef
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """A model version's scores on this site's held-out (validation) rows, for a query."""
        try:
            model = model_config_from_json(study.model)
        except FederationError as error:
            raise TaskError(f"the study's model cannot be built: {error}") from None
        adapter = self._build(model)
        spec = adapter.model_spec()
        limit = max_update_bytes(spec)
        if reference.size > limit:
            raise TaskError(
                f"model version {reference.id} announces {reference.size} bytes; its spec allows {limit}"
            )
        self._progress(
            ProgressStep.DOWNLOADING, f"model version {reference.id} to evaluate ({reference.size} bytes)"
        )
        downloaded = self._client.download_model(reference.id, max_bytes=limit)
        verify_download(reference, downloaded)
        adapter.set_weights(deserialize_weights(downloaded.data, spec=spec))
        validation = self._data.prepare(study, model).validation
        self._progress(
            ProgressStep.EVALUATING, f"model version {reference.id} on {len(validation)} held-out rows"
        )
        labels = np.asarray(validation.labels, dtype=np.int64)
        return labels, np.asarray(adapter.predict(validation.features), dtype=np.float64)

    def _handle(self, task: WorkTask) -> TaskOutcome:
        state = self._store.load()
        if task.job_id in state.refused_jobs:
            # Refused before: tell the server again (it evidently did not record it), decide nothing anew.
            self._send_refusal(task.job_id, state.refused_jobs[task.job_id])
            return TaskOutcome.REFUSED
        if state.is_completed(task.kind, task.round_id):
            logger.info("this %s task was already done; nothing to send", task.kind.value)
            return TaskOutcome.ALREADY_DONE
        reason = self._policy_reason(task) or self._base_model_reason(task)
        if reason is not None:
            logger.warning("refusing the job: %s", reason)
            self._store.remember_refusal(task.job_id, reason)
            self._send_refusal(task.job_id, reason)
            return TaskOutcome.REFUSED
        model = _model_config(task)
        if task.kind is TaskKind.TRAIN and task.secure_aggregation is not None:
            return self._secure(task, model)
        if task.kind is TaskKind.TRAIN:
            return self._train(task, model)
        return self._evaluate(task, model)

    # --- secure aggregation ---------------------------------------------------------------

    def _secure(self, task: WorkTask, model: AnyModelConfig) -> TaskOutcome:
        secure = SecureRound(self._store.directory, task, self._institution_id)
        try:
            return self._secure_phase(task, model, secure)
        except ApiError as error:
            if error.status != 409 or error.code not in ROUND_OVER_CODES:
                raise
            # Out of this round for good: its secrets have nothing left to protect here.
            logger.warning("this site is out of the secure round: %s", error)
            self._store.mark_done(TaskKind.TRAIN, task.round_id)
            secure.finish()
            return TaskOutcome.SECURE_STEP

    def _secure_phase(self, task: WorkTask, model: AnyModelConfig, secure: SecureRound) -> TaskOutcome:
        if secure.phase == "mask":
            return self._train(task, model, secure)
        self._progress(ProgressStep.UPLOADING, f"secure aggregation: the {secure.phase} step")
        if secure.phase == "advertise":
            self._client.post_secure_aggregation(task.round_id, "keys", secure.keys())
        elif secure.phase == "share":
            self._client.post_secure_aggregation(task.round_id, "shares", {"shares": secure.shares()})
        else:
            self._client.post_secure_aggregation(task.round_id, "unmasking", secure.unmasking())
            self._store.mark_done(TaskKind.TRAIN, task.round_id)
            secure.finish()
            return TaskOutcome.UPLOADED
        return TaskOutcome.SECURE_STEP

    # --- policy ------------------------------------------------------------------------

    def _policy_reason(self, task: WorkTask) -> str | None:
        approved = (
            self._client.me().approved_study_ids() if needs_server_approvals(self._policy) else frozenset()
        )
        return check_task(self._policy, task, approved)

    def _base_model_reason(self, task: WorkTask) -> str | None:
        """Why this site cannot run the study's pinned base model (missing, or a file differs)."""
        model = _model_config(task)
        if not isinstance(model, TextModelConfig):
            return None
        try:
            verify_base_model(model.base_model, locate_base_model(model.base_model, self._models.folders))
        except BaseModelError as error:
            return str(error)
        return None

    def _send_refusal(self, job_id: int, reason: str) -> None:
        try:
            self._client.refuse_job(job_id, reason)
        except ApiError as error:  # e.g. the job ended meanwhile; the refusal stays recorded here
            logger.warning("the server did not take the refusal: %s", error)

    # --- train -------------------------------------------------------------------------

    def _train(self, task: WorkTask, model: AnyModelConfig, secure: SecureRound | None = None) -> TaskOutcome:
        current = self._resumable(task)
        if current is not None and current.step is Step.TRAINED:
            update = self._store.read_prepared(current)
            if update is not None:
                logger.info("resuming: sending the update prepared before the restart")
                return self._upload(task, current, update, secure)
            logger.warning("the prepared update is missing or damaged; training again")
        adapter = self._build(model)
        global_weights = self._global_weights(task, adapter.model_spec())
        adapter.set_weights(global_weights)
        data = self._data.prepare(task.study, model)
        privacy = task.study.privacy
        if privacy is None:  # the policy check refuses such a study before it gets here
            raise TaskError(f"the study's privacy settings are not understood: {task.study.privacy_problem}")
        plan = self._dp_sgd_plan(task, privacy, len(data.train))
        refusal = self._budget_refusal(task, privacy, plan)
        if refusal is not None:
            logger.warning("refusing the job: %s", refusal)
            self._store.remember_refusal(task.job_id, refusal)
            self._send_refusal(task.job_id, refusal)
            return TaskOutcome.REFUSED
        current, update = self._train_locally(task, adapter, data, global_weights, privacy, plan, secure)
        return self._upload(task, current, update, secure)

    def _build(self, model: AnyModelConfig) -> ModelAdapter:
        """The study's model; a text model's base model is loaded once per process and reused."""
        return build_model(model, site=self._models)

    def _dp_sgd_plan(self, task: WorkTask, privacy: PrivacySettings, num_rows: int) -> DpSgdPlan | None:
        training = task.study.training
        return dp_sgd_plan(
            privacy,
            num_examples=num_rows,
            batch_size=training.batch_size,
            epochs=training.epochs,
            total_rounds=task.total_rounds,
            max_steps=training.max_steps,
        )

    def _budget_refusal(self, task: WorkTask, privacy: PrivacySettings, plan: DpSgdPlan | None) -> str | None:
        """Why this round would take the site past its own or the study's epsilon, or None."""
        if plan is None:
            return None
        limit = min(self._policy.privacy.max_epsilon, privacy.budget)
        after = self._ledger.epsilon(task.job_id, delta=privacy.delta, extra=plan.event())
        if after > limit:
            return (
                f"round {task.round_number} would bring this site to epsilon {after:.3f}, "
                f"above its limit {limit:g}"
            )
        return None

    def _train_locally(
        self,
        task: WorkTask,
        adapter: ModelAdapter,
        data: PreparedData,
        global_weights: Weights,
        privacy: PrivacySettings,
        plan: DpSgdPlan | None,
        secure: SecureRound | None,
    ) -> tuple[RoundState, bytes]:
        training = task.study.training
        dp_note = f" with DP-SGD (noise {plan.noise_multiplier:.3f})" if plan else ""
        length = f"{training.max_steps} steps" if training.max_steps else f"{training.epochs} epoch(s)"
        self._progress(ProgressStep.TRAINING, f"{length} on {len(data.train)} rows{dp_note}")
        config = TrainConfig(
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            proximal_mu=training.proximal_mu,
            seed=training_seed(task.study.seed, task.round_number, self._institution_id),
            dp_noise_multiplier=plan.noise_multiplier if plan else None,
            dp_clipping_norm=plan.clipping_norm if plan else None,
            max_steps=training.max_steps,
            class_weighting=training.class_weighting,
        )
        result = adapter.fit(data.train.features, data.train.labels, config)
        dp_steps = self._record_dp_round(task, plan, result.metrics)
        local_metrics = evaluate_model(adapter, data.validation, prefix="local_")
        trained = adapter.get_weights()
        # The global model is rated after training, so training starts as soon as the task
        # arrives; the trained weights are put back before anything is sent.
        adapter.set_weights(global_weights)
        global_metrics = evaluate_model(adapter, data.validation, prefix="global_")
        adapter.set_weights(trained)
        sent = filter_update(trained, global_weights, settings=privacy, filters=self._policy.filters)
        if secure is None:
            update = serialize_weights(sent, spec=adapter.model_spec())
        else:  # client-level DP weighs every site alike, so the mean's sensitivity stays C
            weight = 1.0 if privacy.uses_client_dp else float(result.num_examples)
            update = secure.mask(sent, global_weights, adapter.model_spec(), weight)
        metrics = {**global_metrics, **local_metrics}
        current = replace(_round_state(task, Step.TRAINED, result.num_examples, metrics), dp_steps=dp_steps)
        return self._store.save_prepared(current, update), update

    def _record_dp_round(
        self, task: WorkTask, plan: DpSgdPlan | None, train_metrics: Mapping[str, float]
    ) -> dict[str, float] | None:
        """The DP-SGD steps training actually took, written to the site's ledger first."""
        if plan is None:
            return None
        dp_steps = {
            "noise_multiplier": plan.noise_multiplier,
            "sampling_rate": float(train_metrics.get("dp_sampling_rate", plan.sampling_rate)),
            "steps": float(train_metrics.get("dp_steps", plan.steps)),
        }
        self._ledger.record(task.job_id, task.round_number, list(dp_steps.values()))
        return dp_steps

    def _upload(
        self, task: WorkTask, current: RoundState, update: bytes, secure: SecureRound | None = None
    ) -> TaskOutcome:
        digest = sha256_hex(update)
        self._progress(
            ProgressStep.UPLOADING,
            f"update of {len(update)} bytes (sha256 {digest[:16]}) trained on {current.num_examples} rows",
        )
        meta = {
            "num_examples": current.num_examples,
            "metrics": current.metrics,
            "base_model_sha256": current.model_sha256,
            "job_id": current.job_id,
            "round_number": current.round_number,
        }
        if current.dp_steps is not None:
            meta["dp_steps"] = {**current.dp_steps, "steps": int(current.dp_steps["steps"])}
        if secure is not None:
            del meta["num_examples"]  # it travels inside the masked sum
        try:
            receipt = self._client.upload_update(task.round_id, meta, update, masked=secure is not None)
        except ApiError as error:
            if error.status != 409 or error.code != "update_exists":
                raise
            logger.warning("the server already holds this site's update for the round; sending no other")
        else:
            if receipt.sha256 and receipt.sha256 != digest:
                logger.warning(
                    "the server reports sha256 %s for the update sent as %s", receipt.sha256, digest
                )
            logger.info("update accepted%s", " (the server already had it)" if receipt.duplicate else "")
        if secure is not None:
            return TaskOutcome.SECURE_STEP  # the unmask phase is still to come
        self._store.mark_done(TaskKind.TRAIN, task.round_id)
        return TaskOutcome.UPLOADED

    # --- evaluate ----------------------------------------------------------------------

    def _evaluate(self, task: WorkTask, model: AnyModelConfig) -> TaskOutcome:
        current = self._resumable(task)
        if current is None or current.step is not Step.EVALUATED:
            adapter = self._build(model)
            adapter.set_weights(self._global_weights(task, adapter.model_spec()))
            validation = self._data.prepare(task.study, model).validation
            self._progress(ProgressStep.EVALUATING, f"the final model on {len(validation)} validation rows")
            metrics = evaluate_model(adapter, validation, prefix="")
            current = self._store.save_prepared(
                _round_state(task, Step.EVALUATED, len(validation), metrics), None
            )
        self._progress(
            ProgressStep.UPLOADING, f"{len(current.metrics)} metrics over {current.num_examples} rows"
        )
        self._client.post_evaluation(task.round_id, current.num_examples, current.metrics)
        logger.info("evaluation accepted")
        self._store.mark_done(TaskKind.EVALUATE, task.round_id)
        return TaskOutcome.EVALUATED

    # --- shared steps ------------------------------------------------------------------

    def _resumable(self, task: WorkTask) -> RoundState | None:
        """The saved progress of this very round (same kind, round and base model), if any."""
        current = self._store.load().current
        same_round = current is not None and current.kind is task.kind and current.round_id == task.round_id
        if same_round and current is not None and current.model_sha256 == task.model_version.sha256:
            return current
        return None

    def _global_weights(self, task: WorkTask, spec: ModelSpec) -> Weights:
        """The round's global model: from the local copy if intact, else downloaded and checked."""
        reference = task.model_version
        data = self._store.read_model(reference.sha256)
        if data is None:
            limit = max_update_bytes(spec)
            if reference.size > limit:
                raise TaskError(
                    f"model version {reference.id} announces {reference.size} bytes; its spec allows {limit}"
                )
            self._progress(ProgressStep.DOWNLOADING, f"model version {reference.id} ({reference.size} bytes)")
            downloaded = self._client.download_model(reference.id, max_bytes=limit)
            verify_download(reference, downloaded)
            self._store.save_model(reference.sha256, downloaded.data)
            data = downloaded.data
        self._store.begin(_round_state(task, Step.DOWNLOADED, 0, {}))
        self._store.clean_files(keep_model=reference.sha256)
        return deserialize_weights(data, spec=spec)


def verify_download(reference: ModelVersionRef, downloaded: DownloadedModel) -> None:
    """Refuse a model whose size or SHA-256 differ from what the task announced."""
    actual = sha256_hex(downloaded.data)
    if len(downloaded.data) != reference.size:
        raise TaskError(
            f"model version {reference.id}: got {len(downloaded.data)} bytes, expected {reference.size}"
        )
    if actual != reference.sha256:
        raise TaskError(
            f"model version {reference.id}: sha256 {actual} differs from the task's {reference.sha256}"
        )
    header = downloaded.header_sha256
    if header is not None and header.lower() != reference.sha256:
        raise TaskError(f"model version {reference.id}: X-Content-SHA256 {header} differs from the task's")


def evaluate_model(adapter: ModelAdapter, dataset: Dataset | TextDataset, *, prefix: str) -> dict[str, float]:
    """Aggregate metrics of the adapter's current weights on ``dataset``, names prefixed."""
    metrics = compute_metrics(dataset.task, dataset.labels, adapter.predict(dataset.features))
    return {prefix + name: float(value) for name, value in metrics.items() if math.isfinite(value)}


def _model_config(task: WorkTask) -> AnyModelConfig:
    try:
        return model_config_from_json(task.study.model)
    except FederationError as error:
        raise TaskError(f"the study's model cannot be built: {error}") from None


def _round_state(task: WorkTask, step: Step, num_examples: int, metrics: dict[str, float]) -> RoundState:
    return RoundState(
        kind=task.kind,
        job_id=task.job_id,
        round_id=task.round_id,
        round_number=task.round_number,
        model_sha256=task.model_version.sha256,
        step=step,
        num_examples=num_examples,
        metrics=metrics,
    )
