"""PyTorch models (logistic/softmax regression, MLP, small CNN) behind :class:`ModelAdapter`.

Local training is plain minibatch SGD (``torch.optim.SGD``) over data shuffled by a
``torch.Generator`` seeded from :attr:`TrainConfig.seed`; module weights are initialised
from a generator seeded by the adapter's ``seed``. Neither touches torch's global RNG or
thread settings, so the same seed, data and starting weights give bit-identical results.

When ``TrainConfig.proximal_mu > 0`` the local objective gets the FedProx proximal term
``mu / 2 * ||w - w_global||^2``, where ``w_global`` is a frozen copy of the weights at the
start of :meth:`TorchAdapter.fit` (the global model the server just sent). See
T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar and V. Smith, "Federated
Optimization in Heterogeneous Networks", Proceedings of MLSys 2020.

When :attr:`TrainConfig.uses_dp_sgd`, local training is DP-SGD instead (M. Abadi et al.,
"Deep Learning with Differential Privacy", CCS 2016) through Opacus: Poisson-sampled
batches, each example's gradient clipped to ``dp_clipping_norm``, Gaussian noise of std
``dp_noise_multiplier * dp_clipping_norm`` on their sum, Opacus's RDP accountant recording
the steps. Opacus wraps the module in a ``GradSampleModule`` (parameter names prefixed by
``_module.``) only for the duration of :meth:`TorchAdapter.fit`; the adapter keeps the
bare module, so tensor names never change. The steps taken come back in
:attr:`TrainResult.privacy_spend` for the site's privacy ledger.

Weights move only as numpy arrays; this module never uses torch.load or pickle.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federation.errors import ConfigurationError
from federation.models.base import (
    CNN_CHANNELS,
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
from federation.privacy.accounting import PrivacyEvent
from federation.types import ModelSpec, Task, TensorSpec, Weights

#: Output channels of the CNN's two 3x3 convolutions (each followed by ReLU and 2x2 max-pool).

#: Rows per forward pass in predict(), to bound memory on large inputs.
_PREDICT_CHUNK = 8192


class LinearNet(nn.Module):
    """One linear layer: logits (binary/multiclass) or the prediction (regression)."""

    def __init__(self, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


class MLPNet(nn.Module):
    """Fully connected ReLU layers of ``hidden_sizes`` followed by a linear output layer."""

    def __init__(self, num_features: int, hidden_sizes: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        widths = (num_features, *hidden_sizes)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.output = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = F.relu(layer(x))
        out: torch.Tensor = self.output(x)
        return out


class SmallCNN(nn.Module):
    """Two conv(3x3, padding 1) -> ReLU -> max-pool(2) blocks, then ReLU dense layers of
    ``hidden_sizes`` and a linear output. Input rows are flattened square images."""

    def __init__(self, image_size: int, hidden_sizes: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.image_size = image_size
        first, second = CNN_CHANNELS
        self.conv1 = nn.Conv2d(1, first, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(first, second, kernel_size=3, padding=1)
        flat = second * (image_size // 4) ** 2
        widths = (flat, *hidden_sizes)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.output = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, self.image_size, self.image_size)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, start_dim=1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        out: torch.Tensor = self.output(x)
        return out


def _build_module(config: ModelConfig) -> nn.Module:
    if config.kind is ModelKind.LOGISTIC:
        return LinearNet(config.num_features, config.num_outputs)
    if config.kind is ModelKind.MLP:
        return MLPNet(config.num_features, config.hidden_sizes, config.num_outputs)
    if config.kind is ModelKind.CNN:
        assert config.image_size is not None  # guaranteed by ModelConfig
        return SmallCNN(config.image_size, config.hidden_sizes, config.num_outputs)
    raise ConfigurationError(f"{config.kind.value!r} is not a torch model kind")


def _init_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights (bound sqrt(6 / fan_in)) for layers followed by a ReLU, uniform
    +-1/sqrt(fan_in) for the final (output) layer, zero biases. Drawn from ``generator`` so
    torch's global RNG is never touched."""
    # Every module here registers its output layer last.
    layers = [layer for layer in module.modules() if isinstance(layer, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        for index, layer in enumerate(layers):
            fan_in = layer.weight[0].numel()
            is_output = index == len(layers) - 1
            bound = 1.0 / math.sqrt(fan_in) if is_output else math.sqrt(6.0 / fan_in)
            layer.weight.uniform_(-bound, bound, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()


class TorchAdapter:
    """A torch model (``logistic``, ``mlp`` or ``cnn``) behind :class:`ModelAdapter`.

    ``seed`` fixes the initial weights. Tensor names are torch's parameter names, e.g.
    ``linear.weight``/``linear.bias`` (logistic), ``hidden.0.weight`` ... ``output.bias``
    (mlp), ``conv1.weight`` ... ``output.bias`` (cnn).
    """

    def __init__(self, config: ModelConfig, *, seed: int = 0) -> None:
        if not config.kind.uses_torch:
            raise ConfigurationError(f"TorchAdapter cannot build a {config.kind.value!r} model")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = config
        # Build on the meta device (no memory, no RNG use), then materialise and initialise
        # from our own generator.
        with torch.device("meta"):
            module = _build_module(config)
        module.to_empty(device="cpu")
        _init_parameters(module, torch.Generator().manual_seed(seed))
        module.eval()
        self._module = module
        self._spec = ModelSpec(
            tuple(
                TensorSpec(name, tuple(int(d) for d in param.shape), "F32")
                for name, param in module.named_parameters()
            )
        )

    @property
    def module(self) -> nn.Module:
        """The underlying torch module (for inspection; prefer the adapter methods)."""
        return self._module

    def model_spec(self) -> ModelSpec:
        return self._spec

    def get_weights(self) -> Weights:
        return {
            name: param.detach().numpy().astype(np.float32, copy=True)
            for name, param in self._module.named_parameters()
        }

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        checked = validate_weights(self._spec, weights)
        params = dict(self._module.named_parameters())
        with torch.no_grad():
            for name, array in checked.items():
                params[name].copy_(torch.from_numpy(array))

    def fit(self, features: NDArray[Any], labels: NDArray[Any], config: TrainConfig) -> TrainResult:
        x_np = validate_features(self.config, features)
        y_np = validate_labels(self.config, labels, x_np.shape[0])
        x = torch.from_numpy(x_np)
        if self.config.task is Task.MULTICLASS:
            y = torch.from_numpy(y_np.astype(np.int64))
        else:
            y = torch.from_numpy(y_np.astype(np.float32))

        start = [p.detach().clone() for p in self._module.parameters()]  # restored on divergence
        privacy_spend = None
        self._module.train()
        try:
            if config.uses_dp_sgd:
                privacy_spend = self._train_dp_sgd(x, y, config)
            else:
                weights = example_weights(self.config.task, y_np, self.config.num_classes, config)
                self._train_sgd(x, y, config, start, None if weights is None else torch.from_numpy(weights))
        finally:
            self._module.eval()
        self._restore_if_diverged(start, config)
        metrics = training_metrics(self.config.task, self._predict(x), y_np)
        if privacy_spend is not None:
            # Also as plain metrics, for callers that only read metrics (the silo agent).
            metrics["dp_steps"] = float(privacy_spend.steps)
            metrics["dp_sampling_rate"] = privacy_spend.sampling_rate
        return TrainResult(num_examples=int(x.shape[0]), metrics=metrics, privacy_spend=privacy_spend)

    def _train_sgd(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        start: list[torch.Tensor],
        weights: torch.Tensor | None,
    ) -> None:
        """Minibatch SGD over a seeded shuffle, with FedProx's proximal term to ``start``;
        ``weights``: each example's weight in the loss (None: all 1)."""
        params = list(self._module.parameters())
        mu = float(config.proximal_mu)
        optimizer = torch.optim.SGD(params, lr=float(config.learning_rate))
        generator = torch.Generator().manual_seed(config.seed)
        n = x.shape[0]
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            for begin in range(0, n, config.batch_size):
                batch = order[begin : begin + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = self._loss(
                    self._module(x[batch]), y[batch], None if weights is None else weights[batch]
                )
                if mu > 0:
                    proximal = sum(
                        (torch.sum((p - p0) ** 2) for p, p0 in zip(params, start, strict=True)),
                        torch.zeros(()),
                    )
                    loss = loss + 0.5 * mu * proximal
                loss.backward()
                optimizer.step()

    def _train_dp_sgd(self, x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> PrivacyEvent:
        """DP-SGD with Opacus; returns what it spent (from Opacus's RDP accountant)."""
        # Imported here: Opacus takes seconds to import and only DP studies need it.
        from opacus import PrivacyEngine

        sampling_generator, noise_generator = dp_generators(config.dp_seed)
        loader = DataLoader(TensorDataset(x, y), batch_size=config.batch_size, generator=sampling_generator)
        optimizer = torch.optim.SGD(self._module.parameters(), lr=float(config.learning_rate))
        with warnings.catch_warnings():
            # Deliberate: the generators are seeded from the OS CSPRNG at real sites (see
            # TrainConfig), and Opacus's hooks fire on inputs that need no gradient.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            engine = PrivacyEngine(accountant="rdp")
            private_module, private_optimizer, private_loader = engine.make_private(
                module=self._module,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=config.dp_noise_multiplier,
                max_grad_norm=config.dp_clipping_norm,
                poisson_sampling=True,
                noise_generator=noise_generator,
            )
            try:
                for _ in range(config.epochs):
                    for batch_x, batch_y in private_loader:
                        private_optimizer.zero_grad(set_to_none=True)
                        self._loss(private_module(batch_x), batch_y).backward()
                        private_optimizer.step()
            finally:
                private_module.cleanup()  # hooks and per-sample gradients off the bare module
        return privacy_spend(engine.accountant.history)

    def _restore_if_diverged(self, start: list[torch.Tensor], config: TrainConfig) -> None:
        params = list(self._module.parameters())
        if all(bool(torch.isfinite(p).all()) for p in params):
            return
        with torch.no_grad():
            for p, p0 in zip(params, start, strict=True):
                p.copy_(p0)
        raise ConfigurationError(
            "local training diverged (weights became NaN or infinite); "
            f"lower learning_rate (was {config.learning_rate}) or standardize the features"
        )

    def predict(self, features: NDArray[Any]) -> NDArray[np.float64]:
        x = torch.from_numpy(validate_features(self.config, features, allow_empty=True))
        return self._predict(x)

    def _loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        reduction = "mean" if weights is None else "none"
        if self.config.task is Task.MULTICLASS:
            losses = F.cross_entropy(outputs, targets, reduction=reduction)
        elif self.config.task is Task.BINARY:
            losses = F.binary_cross_entropy_with_logits(outputs[:, 0], targets, reduction=reduction)
        else:
            losses = F.mse_loss(outputs[:, 0], targets, reduction=reduction)
        return weighted_mean(losses, weights)

    def _predict(self, x: torch.Tensor) -> NDArray[np.float64]:
        chunks = []
        with torch.no_grad():
            for begin in range(0, max(x.shape[0], 1), _PREDICT_CHUNK):
                out = self._module(x[begin : begin + _PREDICT_CHUNK])
                if self.config.task is Task.MULTICLASS:
                    out = torch.softmax(out, dim=1)
                elif self.config.task is Task.BINARY:
                    out = torch.sigmoid(out[:, 0])
                else:
                    out = out[:, 0]
                chunks.append(out.numpy().astype(np.float64))
        return np.concatenate(chunks, axis=0)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The batch's loss: the mean of the examples' losses, each times its weight if given
    (the minibatch estimate of the weighted empirical risk). Already a mean: returned as is."""
    if weights is None:
        return losses.mean()
    return (losses * weights.to(losses.device, losses.dtype)).mean()


def dp_generators(
    dp_seed: int | None, device: torch.device | None = None
) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators, for DP-SGD's batch sampling and its noise.

    Seeded from ``dp_seed`` (repeatable) or, when it is None, from 128 bits of the OS
    CSPRNG, so nobody who knows the round's ``seed`` can predict batches or noise."""
    entropy = secrets.randbits(128) if dp_seed is None else dp_seed
    sampling_seed, noise_seed = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    # The batch sampler draws on the CPU; Opacus draws the noise where the parameters are.
    noise_device = device or torch.device("cpu")
    return (
        torch.Generator().manual_seed(int(sampling_seed)),
        torch.Generator(device=noise_device).manual_seed(int(noise_seed)),
    )


def privacy_spend(history: list[tuple[float, float, int]]) -> PrivacyEvent:
    """Opacus's RDP history, ``[(noise_multiplier, sample_rate, steps)]``, as one event:
    one fit keeps the noise and the rate fixed, so there is exactly one entry."""
    if len(history) != 1:
        raise ConfigurationError(f"expected one DP-SGD accounting entry per fit, Opacus recorded {history!r}")
    noise_multiplier, sampling_rate, steps = history[0]
    return PrivacyEvent(float(noise_multiplier), float(sampling_rate), int(steps))
