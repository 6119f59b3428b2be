"""A job's privacy: the resolved DP mechanism, the budget that ends training, the ledger.

Services called by :mod:`training.services` inside its transactions (docs/privacy.md):

* :func:`job_plan_resolve` makes a new job's round plan and fixes the noise of
  client-level DP (from the study, or the smallest that keeps ``num_rounds`` within the
  budget); the plan (:class:`federation.rounds.RoundPlan`) aggregates every round;
* :func:`training_round_refusal` says why a training round may not open: the budget;
* :func:`privacy_spend_client_round` and :func:`privacy_spend_sample_update` keep each
  institution's ledger row for the job up to date.
"""

from __future__ import annotations

from federation.aggregation.strategies import build_strategy
from federation.errors import ConfigurationError
from federation.models import adapter_aggregation_of, model_config_from_json
from federation.privacy import accounting
from federation.privacy.settings import DPLevel, PrivacySettings
from federation.rounds import BUDGET_TOLERANCE, RoundPlan
from fedplatform.errors import InvalidInput
from studies.models import Study
from training.models import Job, PrivacySpend, Round, RoundKind, Update


def settings_of(job: Job) -> PrivacySettings:
    """The job's privacy settings, from its round plan (client-level noise resolved)."""
    return job.plan.privacy


def job_plan_resolve(*, study: Study, num_rounds: int) -> RoundPlan:
    """The round plan of a new job of ``study``: its strategy and privacy settings, with
    the client-level noise multiplier fixed (the study's, or the smallest that keeps
    ``num_rounds`` within the budget).

    Raises :class:`InvalidInput` when the settings are not valid or the budget cannot cover
    a single round.
    """
    try:
        strategy = build_strategy(study.strategy, study.strategy_params)
    except ConfigurationError as error:
        raise InvalidInput(f"the study's strategy is not valid: {error}") from None
    try:
        settings = PrivacySettings.from_json(study.privacy)
    except ConfigurationError as error:  # a study set up before these settings were checked
        raise InvalidInput(f"the study's privacy settings are not valid: {error}") from None
    try:
        adapters = adapter_aggregation_of(model_config_from_json(study.model_config))
    except ConfigurationError as error:
        raise InvalidInput(f"the study's model is not valid: {error}") from None
    plan = RoundPlan(strategy=strategy, privacy=settings, adapters=adapters)
    try:
        return plan.resolved(num_rounds=num_rounds)
    except ConfigurationError as error:
        raise InvalidInput(str(error)) from None


def client_noise(job: Job) -> float:
    """The noise multiplier of the job's client-level DP, fixed when the job was created."""
    noise = job.plan.client_noise_multiplier
    assert noise is not None, "only called for jobs with client-level DP"
    return noise


def training_round_refusal(*, job: Job, number: int) -> str | None:
    """Why training round ``number`` would exceed the study's privacy budget, or None."""
    settings = settings_of(job)
    mechanism = settings.differential_privacy
    if mechanism is None:
        return None
    if mechanism.level is DPLevel.CLIENT:
        spent = accounting.client_level_epsilon(
            noise_multiplier=client_noise(job), rounds=number, delta=settings.delta
        )
        if spent > settings.budget + BUDGET_TOLERANCE:
            return f"round {number} would spend epsilon {spent:.3f} of the budget {settings.budget:g}"
        return None
    return _sample_refusal(job, settings, number)


def _sample_refusal(job: Job, settings: PrivacySettings, number: int) -> str | None:
    """Sample level: each site's own events, with its last round repeated once more."""
    refused = job.refusals.values("institution")
    spends = (
        PrivacySpend.objects.filter(job=job).exclude(institution__in=refused).select_related("institution")
    )
    for spend in spends.exclude(events=[]):
        predicted = _ledger([*spend.events, spend.events[-1]]).epsilon(settings.delta)
        if predicted > settings.budget + BUDGET_TOLERANCE:
            return (
                f"round {number} would bring {spend.institution.name} to epsilon {predicted:.3f} "
                f"of the budget {settings.budget:g}"
            )
    return None


# --- the ledger ----------------------------------------------------------------------------


def privacy_spend_client_round(*, round_: Round) -> None:
    """After a client-level DP round closed: every contributor spent one more round."""
    settings = settings_of(round_.job)
    if not settings.uses_client_dp or round_.kind != RoundKind.TRAIN:
        return
    event = [client_noise(round_.job), 1.0, 1]
    for update in round_.updates.all():
        spend = _spend_row(round_.job, update.institution_id, settings)
        if round_.number in {event_round for *_, event_round in spend.events}:
            continue  # recorded already: a repeated aggregation adds nothing
        _spend_add(spend, [*event, round_.number], settings.delta)


def privacy_spend_sample_update(*, update: Update) -> None:
    """After a site's sample-level DP update arrived: add its DP-SGD steps to its row."""
    job = update.round.job
    settings = settings_of(job)
    if not update.dp_steps:
        return
    spend = _spend_row(job, update.institution_id, settings)
    steps = update.dp_steps
    event = [float(steps["noise_multiplier"]), float(steps["sampling_rate"]), int(steps["steps"])]
    _spend_add(spend, [*event, update.round.number], settings.delta)


def _ledger(rows: list[list[float]]) -> accounting.PrivacyLedgerState:
    """Ledger rows ``[noise_multiplier, sampling_rate, steps, round]`` as an accounting
    ledger, in which rounds of the same mechanism merge: the epsilon of a long job costs one
    composition per mechanism, not one per round."""
    return accounting.PrivacyLedgerState.of(
        accounting.PrivacyEvent(float(row[0]), float(row[1]), int(row[2])) for row in rows
    )


def _spend_row(job: Job, institution_id: int, settings: PrivacySettings) -> PrivacySpend:
    mechanism = settings.differential_privacy
    assert mechanism is not None
    spend, _ = PrivacySpend.objects.select_for_update().get_or_create(
        job=job,
        institution_id=institution_id,
        defaults={"level": mechanism.level.value, "delta": settings.delta},
    )
    return spend


def _spend_add(spend: PrivacySpend, event: list[float | int], delta: float) -> None:
    spend.events = [*spend.events, event]
    spend.rounds = len(spend.events)
    spend.epsilon = _ledger(spend.events).epsilon(delta)
    spend.save(update_fields=["events", "rounds", "epsilon", "updated_at"])


def check_dp_steps(*, job: Job, dp_steps: dict[str, float] | None) -> dict[str, float]:
    """The DP-SGD steps an update declares: required exactly when the study uses sample-level DP."""
    mechanism = settings_of(job).differential_privacy
    sample_level = mechanism is not None and mechanism.level is DPLevel.SAMPLE
    if not sample_level:
        if dp_steps:
            raise InvalidInput("this study uses no sample-level DP; send no dp_steps")
        return {}
    if not dp_steps:
        raise InvalidInput("this study uses sample-level DP: the update must declare its dp_steps")
    fixed = mechanism.noise_multiplier if mechanism is not None else None
    if fixed is not None and abs(dp_steps["noise_multiplier"] - fixed) > 1e-9 * fixed:
        raise InvalidInput(f"dp_steps.noise_multiplier must be the study's {fixed:g}")
    return dp_steps
