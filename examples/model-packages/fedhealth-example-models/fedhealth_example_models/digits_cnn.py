"""A small convolutional network for the 8x8 digit images, behind fedhealth's model adapter
interface (``federation.models.base.ModelAdapter``): its tensors' names and shapes, getting
and setting them, local training and scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from federation.models.base import TrainConfig, TrainResult, validate_weights
from federation.types import ModelSpec, Weights

IMAGE_SIDE = 8


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a max pool and a linear head: about 5,000 parameters."""

    def __init__(self, classes: int, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels * (IMAGE_SIDE // 2) ** 2, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


class DigitsCnnAdapter:
    def __init__(self, classes: int, channels: int, seed: int) -> None:
        torch.manual_seed(seed)
        self._module = DigitsNet(classes, channels)
        self._spec = ModelSpec.from_weights(self.get_weights())

    def model_spec(self) -> ModelSpec:
        return self._spec

    def get_weights(self) -> Weights:
        return {
            name: p.detach().numpy().astype(np.float32, copy=True)
            for name, p in self._module.named_parameters()
        }

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        checked = validate_weights(self._spec, weights)
        parameters = dict(self._module.named_parameters())
        with torch.no_grad():
            for name, array in checked.items():
                parameters[name].copy_(torch.from_numpy(array))

    def _images(self, features: NDArray[Any]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(features, dtype=np.float32)).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)

    def fit(self, features: NDArray[Any], labels: NDArray[Any], config: TrainConfig) -> TrainResult:
        images, targets = self._images(features), torch.as_tensor(np.asarray(labels, dtype=np.int64))
        optimizer = torch.optim.SGD(self._module.parameters(), lr=config.learning_rate)
        generator = torch.Generator().manual_seed(config.seed)
        loss = torch.zeros(())
        for _ in range(config.epochs):
            for batch in torch.randperm(len(targets), generator=generator).split(config.batch_size):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(self._module(images[batch]), targets[batch])
                loss.backward()
                optimizer.step()
        return TrainResult(num_examples=len(targets), metrics={"loss": float(loss.detach())})

    def predict(self, features: NDArray[Any]) -> NDArray[np.float64]:
        with torch.no_grad():
            return torch.softmax(self._module(self._images(features)), dim=1).double().numpy()


def build(config: Mapping[str, object]) -> DigitsCnnAdapter:
    """The factory the entry point names: ``num_classes`` (10), ``channels`` (8), ``seed`` (0)."""
    return DigitsCnnAdapter(
        classes=int(config.get("num_classes", 10)),  # type: ignore[call-overload]
        channels=int(config.get("channels", 8)),  # type: ignore[call-overload]
        seed=int(config.get("seed", 0)),  # type: ignore[call-overload]
    )
