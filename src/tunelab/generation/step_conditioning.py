"""Conditioning that changes during sampling: prompt editing, alternation and `AND` (composable diffusion).

`PromptPlan` says which text each sampling step conditions on (the schedules of `prompt_schedule`).
While the pipeline runs, the denoiser's forward is wrapped: `callback_on_step_end` tells it the loop
iteration, so every call sees the step's own conditioning (a second-order sampler's two calls per step
see the same step). With `AND` the call is made on [negative, sub-prompt 1, ..., sub-prompt n] and
returns [negative, negative + sum_i w_i (sub-prompt i - negative)], so the pipeline's own classifier-free
guidance makes A1111's `uncond + scale * sum_i w_i (cond_i - uncond)`. Works for every sampler: it sits
at the noise prediction, below the scheduler.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from tunelab.errors import TunelabError
from tunelab.generation.prompt_schedule import prompt_schedule, split_and, text_at_step


@dataclass
class PromptPlan:
    """The texts each sampling step conditions on: weighted positive sub-prompts and one negative text."""

    steps: int
    positive: list[tuple[list[tuple[int, str]], float]]  # per AND sub-prompt: (its schedule, its weight)
    negative: list[tuple[int, str]]

    @classmethod
    def of(cls, prompt: str, negative_prompt: str, steps: int) -> PromptPlan:
        # A negative prompt is scheduled but not split at AND (A1111 reads AND there as a word).
        positive = [(prompt_schedule(text, steps), weight) for text, weight in split_and(prompt)]
        return cls(steps, positive, prompt_schedule(negative_prompt, steps))

    @property
    def composed(self) -> bool:
        """More than one sub-prompt, or a weight on the one there is: noise predictions must be combined."""
        return len(self.positive) > 1 or self.positive[0][1] != 1.0

    @property
    def changes(self) -> bool:
        """Whether any conditioning differs between steps or needs combining."""
        return self.composed or len(self.positive[0][0]) > 1 or len(self.negative) > 1

    def texts(self) -> list[str]:
        """Every text some step encodes, each once, in a fixed order."""
        entries = [text for schedule, _ in self.positive for _, text in schedule] + [text for _, text in self.negative]
        return list(dict.fromkeys(entries))

    def at(self, step: int) -> tuple[str, list[tuple[str, float]]]:
        """(negative text, [(positive text, weight), ...]) at sampling step `step` (1-based)."""
        return text_at_step(self.negative, step), [(text_at_step(schedule, step), weight) for schedule, weight in self.positive]


@dataclass
class StepConditioning:
    """A plan and each of its texts encoded: (embeddings (1, L, D), pooled vector (1, P) or None)."""

    plan: PromptPlan
    encoded: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    zero_negative: tuple | None = None  # zeros that stand for an empty negative prompt (--empty-negative), else None
    iteration: int = field(default=0, init=False)  # the pipeline loop's, advanced by `on_step_end`

    def on_step_end(self, pipeline, iteration: int, timestep, tensors: dict) -> dict:
        self.iteration = iteration + 1
        return {}

    def step(self, scheduler_order: int) -> int:
        """The sampling step (1-based) of the current loop iteration; Heun-like samplers run `order` per step."""
        return min(self.iteration // scheduler_order + 1, self.plan.steps)

    def conditioning(self, rows: list[tuple], kwargs: dict, original_rows: list[int]) -> dict:
        """The denoiser's keyword arguments with each batch row's text conditioning (embeddings, pooled); the
        other per-row inputs (SDXL's size ids) repeated from the pipeline's row `original_rows[i]`."""
        embeds = torch.cat([embeddings for embeddings, _ in rows])  # (rows, L, D)
        reference = kwargs["encoder_hidden_states"]
        kwargs = dict(kwargs, encoder_hidden_states=embeds.to(reference.device, reference.dtype))
        pooled = [vector for _, vector in rows]
        if "pooled_projections" in kwargs:  # Flux's and SD3's transformers
            kwargs["pooled_projections"] = torch.cat(pooled).to(kwargs["pooled_projections"])  # (rows, P)
        added = kwargs.get("added_cond_kwargs")
        if added and "text_embeds" in added:  # SDXL's UNet: the pooled vector and the size ids
            index = torch.tensor(original_rows, device=added["time_ids"].device)
            kwargs["added_cond_kwargs"] = dict(
                added, text_embeds=torch.cat(pooled).to(added["text_embeds"]), time_ids=added["time_ids"][index]
            )
        return kwargs

    def forward(self, denoise, scheduler_order: int):
        """The denoiser's forward for this plan, calling `denoise` (the original forward)."""

        def conditioned_forward(*args, **kwargs):
            negative, positives = self.plan.at(self.step(scheduler_order))
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))  # (batch, C, h, w) or Flux's packed
            if sample.shape[0] != 2:  # no classifier-free guidance (Flux.1, or --guidance 1): the positive alone
                if self.plan.composed:
                    raise TunelabError("AND and prompt weights (text :0.5) need classifier-free guidance (--guidance above 1)")
                return denoise(*args, **self.conditioning([self.encoded[positives[0][0]]], kwargs, [0]))
            rows = [0] + [1] * len(positives)  # the pipeline's row each of ours repeats
            index = torch.tensor(rows, device=sample.device)
            unconditional = self.zero_negative or self.encoded[negative]
            kwargs = self.conditioning([unconditional] + [self.encoded[text] for text, _ in positives], kwargs, rows)
            if args:  # SD/SDXL pipelines call the UNet as unet(latents, t, ...)
                sample, timestep, *rest = args
                output = denoise(sample[index], _rows_of(timestep, index), *rest, **kwargs)
            else:  # SD3's pipeline calls the transformer with keywords only
                kwargs.update(hidden_states=sample[index], timestep=_rows_of(kwargs["timestep"], index))
                output = denoise(**kwargs)
            prediction = output[0]  # (1 + n, C, h, w)
            uncond, conds = prediction[:1], prediction[1:]
            if len(positives) == 1 and positives[0][1] == 1.0:
                combined = conds
            else:
                combined = uncond + sum(weight * (conds[i:i + 1] - uncond) for i, (_, weight) in enumerate(positives))
            guided_prediction = torch.cat([uncond, combined])  # (2, C, h, w): what the pipeline guides with
            if isinstance(output, tuple):
                return (guided_prediction, *output[1:])
            output.sample = guided_prediction
            return output

        return conditioned_forward


@torch.no_grad()
def encode_plain_texts(family, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each text through the pipeline's own encoder (models without A1111 weighting: Flux.1, SD3)."""
    return {text: family.encode_plain_text(text) for text in texts}  # (1, L, D), (1, P)


def _rows_of(timestep, index: torch.Tensor):
    """A per-row timestep (2,) repeated as the rows are; a shared one as it is."""
    if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == 2:
        return timestep[index]
    return timestep


@contextmanager
def conditioned_denoiser(denoiser: torch.nn.Module, conditioning: StepConditioning, scheduler_order: int) -> Iterator:
    """The denoiser conditions per step while the block runs; yields the pipeline's `callback_on_step_end`."""
    own_forward = "forward" in vars(denoiser)  # e.g. accelerate's offload hook
    original = denoiser.forward
    denoiser.forward = conditioning.forward(original, scheduler_order)
    try:
        yield conditioning.on_step_end
    finally:
        if own_forward:
            denoiser.forward = original
        else:
            del denoiser.forward
