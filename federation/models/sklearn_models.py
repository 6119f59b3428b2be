"""scikit-learn linear models behind :class:`ModelAdapter`.

``sklearn_sgd`` wraps ``SGDClassifier(loss="log_loss")`` (binary/multiclass, one-vs-rest)
or ``SGDRegressor``; ``sklearn_logistic`` wraps ``LogisticRegression`` (lbfgs, L2, C=1,
warm-started; binary or multinomial).

The weights are exactly the estimator's ``coef_`` and ``intercept_``, on the wire as
float32 tensors named ``coef`` of shape (K, num_features) and ``intercept`` of shape (K,),
where K = num_classes for multiclass tasks and 1 otherwise (SGDRegressor's 1-D ``coef_``
is stored as one row). Before the first fit they are zeros. The shapes depend only on the
:class:`ModelConfig`, so a silo whose local data lack some classes still agrees with the
others: SGD is told every class via ``partial_fit(classes=...)``, and LogisticRegression
gets one zero-weight placeholder row per absent class, which puts the class into the
model without changing the optimised objective.

The adapter keeps the weights rounded to float32, so what it predicts with is exactly
what it sends.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor

from federation.errors import ConfigurationError
from federation.models.base import (
    ModelConfig,
    ModelKind,
    TrainConfig,
    TrainResult,
    example_weights,
    training_metrics,
    validate_features,
    validate_labels,
    validate_weights,
)
from federation.types import ModelSpec, Task, TensorSpec, Weights

#: SGDClassifier | SGDRegressor | LogisticRegression (scikit-learn ships no type hints).
_Estimator = Any


class SklearnAdapter:
    """A scikit-learn model (``sklearn_sgd`` or ``sklearn_logistic``) behind :class:`ModelAdapter`.

    ``seed`` is accepted for symmetry with :class:`TorchAdapter`; the initial weights are
    zeros either way. Training randomness comes from :attr:`TrainConfig.seed`.
    """

    def __init__(self, config: ModelConfig, *, seed: int = 0) -> None:
        if config.kind not in (ModelKind.SKLEARN_SGD, ModelKind.SKLEARN_LOGISTIC):
            raise ConfigurationError(f"SklearnAdapter cannot build a {config.kind.value!r} model")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = config
        rows = config.num_outputs
        self._spec = ModelSpec(
            (
                TensorSpec("coef", (rows, config.num_features), "F32"),
                TensorSpec("intercept", (rows,), "F32"),
            )
        )
        self._weights: Weights = self._spec.zeros()

    def model_spec(self) -> ModelSpec:
        return self._spec

    def get_weights(self) -> Weights:
        return {name: array.copy() for name, array in self._weights.items()}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        self._weights = validate_weights(self._spec, weights)

    def fit(self, features: NDArray[Any], labels: NDArray[Any], config: TrainConfig) -> TrainResult:
        if config.uses_dp_sgd:
            raise ConfigurationError(
                "sample-level differential privacy (DP-SGD) needs a torch model: "
                f"{self.config.kind.value!r} has no per-example gradients to clip; use logistic, mlp or cnn"
            )
        if config.proximal_mu > 0:
            raise ConfigurationError(
                "FedProx needs a torch model: proximal_mu > 0 is not supported by "
                f"{self.config.kind.value!r}; set proximal_mu=0 or use logistic/mlp/cnn"
            )
        x32 = validate_features(self.config, features)
        y = validate_labels(self.config, labels, x32.shape[0])
        x = x32.astype(np.float64)
        estimator = self._estimator(config)
        try:
            with warnings.catch_warnings():
                # An iteration budget of `epochs` is the point; non-convergence is expected.
                warnings.simplefilter("ignore", ConvergenceWarning)
                weights = example_weights(self.config.task, y, self.config.num_classes, config)
                if isinstance(estimator, LogisticRegression):
                    self._fit_logistic(estimator, x, y, weights)
                else:
                    self._fit_sgd(estimator, x, y, config, weights)
        except (ValueError, FloatingPointError) as error:
            raise ConfigurationError(
                f"local training failed ({error}); lower learning_rate (was {config.learning_rate}) "
                "or standardize the features"
            ) from error
        coef = np.asarray(estimator.coef_, dtype=np.float32).reshape(self._spec.tensors[0].shape)
        intercept = np.asarray(estimator.intercept_, dtype=np.float32).reshape(self._spec.tensors[1].shape)
        if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept))):
            raise ConfigurationError(
                "local training diverged (weights became NaN or infinite); "
                f"lower learning_rate (was {config.learning_rate}) or standardize the features"
            )
        self._weights = {"coef": coef, "intercept": intercept}
        metrics = training_metrics(self.config.task, self.predict(x32), y)
        return TrainResult(num_examples=int(x.shape[0]), metrics=metrics)

    def predict(self, features: NDArray[Any]) -> NDArray[np.float64]:
        x = validate_features(self.config, features, allow_empty=True).astype(np.float64)
        task = self.config.task
        if x.shape[0] == 0:
            shape = (0, self.config.num_classes) if task is Task.MULTICLASS else (0,)
            return np.zeros(shape, dtype=np.float64)
        estimator = self._estimator(None)
        if isinstance(estimator, SGDRegressor):
            return np.asarray(estimator.predict(x), dtype=np.float64)
        proba = np.asarray(estimator.predict_proba(x), dtype=np.float64)
        return proba[:, 1] if task is Task.BINARY else proba

    # --- internals ---------------------------------------------------------------------

    def _estimator(self, config: TrainConfig | None) -> _Estimator:
        """A fresh estimator holding the current weights as its fitted state."""
        seed = config.seed if config is not None else 0
        lr = float(config.learning_rate) if config is not None else 0.01
        estimator: _Estimator
        if self.config.kind is ModelKind.SKLEARN_LOGISTIC:
            estimator = LogisticRegression(
                warm_start=True, max_iter=config.epochs if config is not None else 1, random_state=seed
            )
        elif self.config.task is Task.REGRESSION:
            estimator = SGDRegressor(
                learning_rate="constant", eta0=lr, max_iter=1, shuffle=False, random_state=seed
            )
        else:
            estimator = SGDClassifier(
                loss="log_loss",
                learning_rate="constant",
                eta0=lr,
                max_iter=1,
                shuffle=False,
                random_state=seed,
            )
        coef = self._weights["coef"].astype(np.float64)
        intercept = self._weights["intercept"].astype(np.float64)
        if isinstance(estimator, SGDRegressor):
            coef = coef.reshape(-1)
        else:
            estimator.classes_ = np.arange(self.config.num_classes)
        estimator.coef_ = np.ascontiguousarray(coef)
        estimator.intercept_ = np.ascontiguousarray(intercept)
        estimator.n_features_in_ = self.config.num_features
        return estimator

    def _fit_sgd(
        self,
        estimator: SGDClassifier | SGDRegressor,
        x: NDArray[np.float64],
        y: NDArray[Any],
        config: TrainConfig,
        weights: NDArray[np.float64] | None,
    ) -> None:
        rng = np.random.default_rng(config.seed)
        classes = np.arange(self.config.num_classes)
        for _ in range(config.epochs):
            order = rng.permutation(x.shape[0])
            weight = None if weights is None else weights[order]
            if isinstance(estimator, SGDClassifier):
                estimator.partial_fit(x[order], y[order], classes=classes, sample_weight=weight)
            else:
                estimator.partial_fit(x[order], y[order], sample_weight=weight)

    def _fit_logistic(
        self,
        estimator: LogisticRegression,
        x: NDArray[np.float64],
        y: NDArray[Any],
        weights: NDArray[np.float64] | None,
    ) -> None:
        absent = np.setdiff1d(np.arange(self.config.num_classes), y)
        if absent.size == 0:
            estimator.fit(x, y, sample_weight=weights)
            return
        # Zero-weight placeholder rows make every class known to the solver without adding
        # anything to the loss (LogisticRegression normalises by the sum of the weights).
        x_full = np.concatenate([x, np.zeros((absent.size, x.shape[1]))])
        y_full = np.concatenate([y, absent])
        weight = np.concatenate([np.ones(x.shape[0]) if weights is None else weights, np.zeros(absent.size)])
        estimator.fit(x_full, y_full, sample_weight=weight)
