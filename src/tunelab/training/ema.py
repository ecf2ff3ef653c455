"""An exponential moving average of the trained weights, for every technique: what is saved and sampled.

diffusers' EMAModel keeps the shadow weights (its decay ramps up as (1 + n) / (10 + n) to the
asked decay, as diffusers' training scripts use it); the trainer swaps the average in for sample
images and saving and puts the trained weights back after.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers.training_utils import EMAModel


class WeightAverage:
    def __init__(self, parameters: list[torch.nn.Parameter], decay: float, update_every: int):
        self.parameters = parameters
        self.update_every = update_every
        self.average = EMAModel(parameters, decay=decay)

    def after_step(self, step: int) -> None:
        if step % self.update_every == 0:
            self.average.step(self.parameters)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within: the trained parameters hold the average; after: their own values again, exactly."""
        self.average.store(self.parameters)
        self.average.copy_to(self.parameters)
        try:
            yield
        finally:
            self.average.restore(self.parameters)

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
