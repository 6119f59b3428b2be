"""The largest model a study may use: one rule for setting a study up and for the data
agreement, which can widen a model's inputs."""

from __future__ import annotations

from django.conf import settings

from federation.models import AnyModelConfig
from fedplatform.errors import InvalidInput


def check_model_size(model: AnyModelConfig) -> None:
    """Refuse a model too large to build, send and aggregate (counted, never built here)."""
    limit = settings.FEDHEALTH_MAX_MODEL_PARAMETERS
    if model.num_parameters > limit:
        raise InvalidInput(
            f"the model has {model.num_parameters:,} parameters; this control plane takes at most "
            f"{limit:,} (FEDHEALTH_MAX_MODEL_PARAMETERS)"
        )
