"""One training step: what `tunelab train` runs for every micro-batch and `tunelab bench speed` times.

`prepare_step` turns a loaded model family and a technique into a ready step: frozen weights
cast and placed, the technique set up, the speed options applied, the optimizer and schedule
built and the trained modules handed to accelerate. Calling the step runs one micro-batch:
images -> latents, captions -> conditioning, noise -> denoiser -> weighted MSE -> backward, and
at a step boundary the finite check, clipping and the optimizer.

Like the loop around it, it never branches on technique or model family.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from tunelab.methods import check_family
from tunelab.precision import precision_dtype
from tunelab.training.latent_cache import LatentCache
from tunelab.training.optimizers import OPTIMIZERS, make_optimizer, run_learning_rate
from tunelab.training.options import TrainOptions
from tunelab.training.speed import apply_speed_options, attention_context, modules_on, offloaded_encoders
from tunelab.training.text_cache import TextEmbeddingCache


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen weights are cast to: fp32 without mixed precision ("no")."""
    return torch.float32 if mixed_precision == "no" else precision_dtype(mixed_precision)


def make_lr_scheduler(options: TrainOptions, optimizer):
    name = "constant_with_warmup" if options.lr_scheduler == "constant" else options.lr_scheduler
    warmup = 0 if OPTIMIZERS[options.optimizer].schedule_free else options.lr_warmup_steps
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=options.steps,
                         num_cycles=options.lr_cycles, power=options.lr_power)


def sample_generators(seed: int, epoch: int, positions: range, stream: int) -> list[torch.Generator]:
    """One generator per training sample, seeded by what the sample is (run seed, epoch, place in the
    epoch's order): its noise is then the same however the global batch is split over processes, and
    after a resume. `stream` keeps the VAE's sampling apart from the diffusion noise."""
    return [
        torch.Generator().manual_seed(hash((seed, stream, epoch, position)) & 0x7FFF_FFFF_FFFF_FFFF) for position in positions
    ]


def shuffle_tags(captions: list[str], keep: int, tag_dropout: float, shuffle: bool,
                 generators: list[torch.Generator]) -> list[str]:
    """kohya's caption handling for tagged datasets: the comma-separated tags after the first `keep` are
    left out with `tag_dropout` and shuffled, each caption by its sample's own generator (reproducible)."""
    if not (shuffle or tag_dropout):
        return captions
    changed = []
    for caption, generator in zip(captions, generators):
        tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
        kept, rest = tags[:keep], tags[keep:]
        if tag_dropout:
            rest = [tag for tag in rest if torch.rand(1, generator=generator).item() >= tag_dropout]
        if shuffle:
            rest = [rest[index] for index in torch.randperm(len(rest), generator=generator).tolist()]
        changed.append(", ".join(kept + rest))
    return changed


def drop_captions(captions: list[str], probability: float, generators: list[torch.Generator]) -> list[str]:
    """Each caption replaced by "" with `probability`, drawn from its sample's own generator (reproducible, resumable)."""
    if not probability:
        return captions
    return ["" if torch.rand(1, generator=generator).item() < probability else caption
            for caption, generator in zip(captions, generators)]


def gradients_finite(accelerator, parameters, max_grad_norm: float) -> bool:
    """Clip (when asked) and report whether every gradient is finite."""
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in parameters if p.grad is not None])
        )
    return bool(torch.isfinite(norm))


def diffusion_losses(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, is_prior: torch.Tensor, prior_weight: float,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, instance, prior) losses; class images (is_prior) form the prior-preservation term. `masks`
    (B, 1, H, W) in pixels weight each latent pixel by how much of it is to be learned (area average)."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")  # (B, C, h, w)
    if masks is not None:
        per_sample = per_sample * F.interpolate(masks.to(per_sample), size=per_sample.shape[-2:], mode="area")  # (B, 1, h, w)
    per_sample = per_sample.flatten(1).mean(dim=1) * weights  # (B,)
    instance = per_sample[~is_prior].mean()
    prior = per_sample[is_prior].mean() if is_prior.any() else torch.zeros((), device=per_sample.device)
    return instance + prior_weight * prior, instance, prior


@dataclass
class StepResult:
    loss: torch.Tensor
    instance_loss: torch.Tensor
    prior_loss: torch.Tensor
    synced: bool  # an optimizer-step boundary (the last micro-batch of a gradient-accumulation cycle)
    finite: bool  # loss and gradients finite, so the optimizer stepped


class TrainingStep:
    """One micro-batch of training on prepared modules; see `prepare_step`."""

    def __init__(self, accelerator, family, method, options: TrainOptions, optimizer, lr_scheduler, modules: list):
        self.accelerator, self.family, self.method, self.options = accelerator, family, method, options
        self.optimizer, self.lr_scheduler, self.modules = optimizer, lr_scheduler, modules
        self.weight_dtype = weight_dtype(options.mixed_precision)
        # With --offload-encoders the VAE and text encoders sit on the CPU and come to the device only
        # while they fill the caches (and while sample images are made).
        self.offloaded = offloaded_encoders(options, family)
        self.encoders_on_device = partial(modules_on, self.offloaded, accelerator.device) if self.offloaded else nullcontext
        self.image_encoder = LatentCache(family, self.encoders_on_device) if options.cache_latents else family
        self.prompt_encoder = TextEmbeddingCache(family, self.encoders_on_device) if options.cache_text_embeddings else family
        self.trainable_parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.attention = attention_context(options.attention_backend, accelerator.device)

    def __call__(self, batch: dict, epoch: int, batch_index: int) -> StepResult:
        """`batch_index`: this process's micro-batch count in the epoch before this one (0 for the first)."""
        accelerator, family, options = self.accelerator, self.family, self.options
        with accelerator.accumulate(*self.modules):
            # This micro-batch's place in the epoch's order, counted over all processes.
            micro_batch = batch_index * accelerator.num_processes + accelerator.process_index
            size = batch["pixel_values"].shape[0]
            positions = range(micro_batch * size, (micro_batch + 1) * size)
            latents = self.image_encoder.encode_images(
                batch["pixel_values"], sample_generators(options.seed, epoch, positions, stream=1)
            ).to(self.weight_dtype)  # (B, C, h, w)
            captions = shuffle_tags(batch["captions"], options.keep_tokens, options.caption_tag_dropout,
                                    options.shuffle_caption, sample_generators(options.seed, epoch, positions, stream=3))
            captions = drop_captions(self.method.training_captions(captions), options.caption_dropout,
                                     sample_generators(options.seed, epoch, positions, stream=2))
            conditioning = self.prompt_encoder.encode_prompts(captions)
            noisy = family.add_noise(latents, options.noise_offset, sample_generators(options.seed, epoch, positions, stream=0))
            with self.attention():
                prediction = family.predict(noisy, conditioning)
                loss, instance_loss, prior_loss = diffusion_losses(
                    prediction,
                    noisy.target,
                    family.loss_weights(noisy.timesteps, options.min_snr_gamma),
                    batch["is_prior"].to(prediction.device),
                    options.prior_loss_weight,
                    batch.get("masks"),
                )
                accelerator.backward(loss)
            finite = True
            if accelerator.sync_gradients:
                gradients_ok = gradients_finite(accelerator, self.trainable_parameters, options.max_grad_norm)
                # Under fp16 the grad scaler skips overflowing steps itself and lowers its scale.
                finite = bool(torch.isfinite(loss)) and (gradients_ok or accelerator.scaler is not None)
            if finite:
                self.optimizer.step()
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, instance_loss, prior_loss, synced=accelerator.sync_gradients, finite=finite)


def prepare_step(options: TrainOptions, method, family, accelerator) -> TrainingStep:
    """Freeze and place the model, set the technique up, apply the speed options, build the optimizer
    and schedule, and hand the trained modules to accelerate."""
    frozen_dtype = weight_dtype(options.mixed_precision)
    offloaded = {id(module) for module in offloaded_encoders(options, family)}
    for module in family.frozen_modules().values():
        module.requires_grad_(False)
        module.to("cpu" if id(module) in offloaded else accelerator.device, dtype=frozen_dtype)
    check_family(type(method), family.name, family.title)
    method.setup(family)
    trainable = method.trainable_modules()
    apply_speed_options(options, family, trainable)
    optimizer = make_optimizer(options, method.trainable_parameters(), run_learning_rate(options, method), accelerator.device)
    lr_scheduler = make_lr_scheduler(options, optimizer)
    prepared = accelerator.prepare(*trainable.values(), optimizer, lr_scheduler)
    modules, (optimizer, lr_scheduler) = list(prepared[: len(trainable)]), prepared[len(trainable) :]
    for name, module in zip(trainable, modules):
        family.set_module(name, module)
        module.train()
    return TrainingStep(accelerator, family, method, options, optimizer, lr_scheduler, modules)
