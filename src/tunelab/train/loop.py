"""The single training loop: data -> latents -> noise -> denoiser -> weighted MSE -> optimizer.

It never branches on technique or model family: the method says what trains and how
it is saved, the family says how prompts are encoded and what the target is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.train.options import TrainOptions
from tunelab.train.step import prepare_step

logger = logging.getLogger(__name__)

def make_loader(dataset, options: TrainOptions, collate):
    from torch.utils.data import DataLoader

    from tunelab.data.buckets import BucketBatchSampler
    from tunelab.data.order import EpochShuffleSampler

    # Starting an iterator draws a worker seed from the loader's generator, or else from the global
    # RNG that dropout uses; a resumed run starts one where the straight run did not.
    worker_seeds = torch.Generator().manual_seed(options.seed)
    if options.buckets:
        sampler = BucketBatchSampler(dataset.bucket_ids, batch_size=options.batch_size, seed=options.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=options.num_workers,
                            generator=worker_seeds)
        return loader, sampler
    sampler = EpochShuffleSampler(len(dataset), seed=options.seed)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=sampler,
        generator=worker_seeds,
        collate_fn=collate,
        num_workers=options.num_workers,
        drop_last=len(dataset) >= options.batch_size,
    )
    return loader, sampler


def stop_requested(accelerator, stop) -> bool:
    """Every process stops at the same step: a signal seen by any of them counts for all."""
    if accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def build_training_data(options: TrainOptions, method, family, resolution: int, accelerator, stop):
    """The instance dataset, paired with class images when prior preservation is on."""
    from tunelab.data.dataset import build_dataset, collate
    from tunelab.data.paired import PriorPairedDataset, collate_paired
    from tunelab.train.prior import cache_folder, default_cache_root, ensure_class_images, model_identity

    def dataset_from(folder, prompt):
        return build_dataset(
            folder, prompt, resolution, center_crop=options.center_crop, random_flip=options.random_flip,
            bucket=options.buckets, seed=options.seed,
        )

    instance = dataset_from(options.images, options.prompt if options.prompt is not None else method.default_prompt)
    if options.class_prompt is None:
        return instance, collate
    class_folder = options.class_images
    if class_folder is None:
        root = Path(options.class_cache) if options.class_cache else default_cache_root()
        identity = model_identity(options.model, options.seed)
        class_folder = cache_folder(root, identity, options.class_prompt, resolution, options.class_sample_steps)
        if accelerator.is_main_process:
            family.pipeline.to(accelerator.device)
            ensure_class_images(
                family.pipeline, class_folder, options.class_prompt, options.num_class_images, resolution,
                options.class_sample_steps, options.seed, show_progress=accelerator.is_local_main_process, stop=stop,
            )
        accelerator.wait_for_everyone()
    return PriorPairedDataset(instance, dataset_from(class_folder, options.class_prompt)), collate_paired


def write_samples(accelerator, family, method, options: TrainOptions, out_dir: Path, step: int, resolution: int, modules, stop) -> None:
    prompts = options.sample_prompts or [options.prompt or method.default_prompt or ""]
    folder = out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for module in modules:
        module.eval()
    try:
        for index, prompt in enumerate(prompts):
            generator = torch.Generator().manual_seed(options.seed + index)
            # Under mixed precision the prepared denoiser returns fp32 while the VAE holds bf16/fp16
            # weights; autocast makes every module of the pipeline agree.
            with accelerator.autocast():
                image = family.pipeline(
                    prompt,
                    num_inference_steps=options.sample_steps,
                    generator=generator,
                    height=resolution,
                    width=resolution,
                    callback_on_step_end=stop.pipeline_callback,
                ).images[0]
            if stop.requested:
                return  # an interrupted sample is not worth saving
            image.save(folder / f"step-{step:07d}-{index}.png")
    finally:
        for module in modules:
            module.train()


def train(options: TrainOptions, method, resolved_config: dict) -> Path:
    from accelerate.state import AcceleratorState

    from tunelab.train.stopping import StopRequest

    try:
        with StopRequest() as stop:
            return _run(options, method, resolved_config, stop)
    finally:
        # accelerate keeps mixed precision in process-wide state; clear it so the next run in this
        # process (tests, the comparison bench) may choose its own.
        AcceleratorState._reset_state()


def _run(options: TrainOptions, method, resolved_config: dict, stop) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from tunelab.config import to_json
    from tunelab.models.family import family_for
    from tunelab.models.loading import load_pipeline
    from tunelab.train.checkpoints import resolve_resume, save_checkpoint
    from tunelab.train.output import record_run
    from tunelab.train.prior import validate_prior_options
    from tunelab.train.state import Progress, load_training_state, save_training_state
    from tunelab.train.stopping import TrainingInterrupted

    out_dir = Path(options.out)
    if options.steps < 1:
        raise TunelabError(f"--steps must be at least 1, got {options.steps}")
    validate_prior_options(options)
    resume_from = resolve_resume(options.resume, out_dir)
    accelerator = Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.gradient_accumulation,
        log_with=None if options.log_with == "none" else options.log_with,
        project_dir=str(out_dir / "logs"),
    )
    set_seed(options.seed)

    pipeline = load_pipeline(options.model, seed=options.seed)
    family = family_for(pipeline, options)
    resolution = options.resolution or family.native_resolution
    dataset, collate = build_training_data(options, method, family, resolution, accelerator, stop)
    if dataset.skipped:
        logger.warning("skipped %d unusable image(s); first: %s (%s)", len(dataset.skipped), *dataset.skipped[0])

    step = prepare_step(options, method, family, accelerator)
    optimizer, lr_scheduler = step.optimizer, step.lr_scheduler
    loader, order = make_loader(dataset, options, collate)  # order: its sampler, shuffled by (seed, epoch)
    loader = accelerator.prepare(loader)

    metadata = {"tunelab_config": to_json(resolved_config), "tunelab_method": method.name}
    if accelerator.is_main_process:
        record_run(out_dir, resolved_config)
    if accelerator.is_main_process and options.log_with != "none":
        accelerator.init_trackers("tunelab", config={k: str(v) for k, v in resolved_config.items()})

    progress = Progress()
    if resume_from is not None:
        progress = load_training_state(resume_from, optimizer, lr_scheduler, accelerator.scaler, method)
        logger.info("resumed from %s at step %d", resume_from, progress.step)
    elif options.resume == "latest":
        logger.info("no checkpoint in %s yet: starting from the beginning", out_dir)

    def checkpoint() -> Path:
        def contents(folder: Path) -> None:
            save_training_state(folder, optimizer, lr_scheduler, accelerator.scaler, progress, method)
            method.save(folder, metadata)

        return save_checkpoint(out_dir, progress.step, options.keep_last, contents)

    bar = tqdm(total=options.steps, initial=progress.step, desc=f"train {method.name}",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    while progress.step < options.steps:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(progress.epoch)
        order.set_epoch(progress.epoch)
        batches = accelerator.skip_first_batches(loader, progress.batches_in_epoch) if progress.batches_in_epoch else loader
        if hasattr(batches, "set_epoch"):
            # accelerate's loaders count their own epochs and pass that count to the sampler; a fresh
            # one (as after a resume) would start again at 0.
            batches.set_epoch(progress.epoch)
        for batch in batches:
            progress.batches_in_epoch += 1
            result = step(batch, progress.epoch, progress.batches_in_epoch - 1)
            if not result.synced:
                continue
            if not result.finite:
                progress.skipped_steps += 1
                progress.nonfinite_in_a_row += 1
                logger.warning("step %d: NaN/inf loss or gradients; step skipped (%d in a row)",
                               progress.step + 1, progress.nonfinite_in_a_row)
                if progress.nonfinite_in_a_row >= options.max_nonfinite_steps:
                    raise TunelabError(
                        f"{progress.nonfinite_in_a_row} steps in a row had NaN/inf loss or gradients; stopped at step "
                        f"{progress.step} (lower --learning-rate, or use bf16 or fp32 instead of fp16)"
                    )
            else:
                progress.nonfinite_in_a_row = 0
                progress.step += 1
                method.after_step(progress.step)
                logs = {"loss": result.loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
                if options.class_prompt is not None:
                    logs |= {"instance_loss": result.instance_loss.detach().item(),
                             "prior_loss": result.prior_loss.detach().item()}
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" if k != "lr" else f"{v:.2e}" for k, v in logs.items()})
                if options.log_with != "none":
                    accelerator.log(logs, step=progress.step)
                if accelerator.is_main_process:
                    if options.sample_every and progress.step % options.sample_every == 0:
                        with step.encoders_on_device():
                            write_samples(accelerator, family, method, options, out_dir, progress.step, resolution,
                                          step.modules, stop)
                    if options.checkpoint_every and progress.step % options.checkpoint_every == 0:
                        checkpoint()
            if stop_requested(accelerator, stop):
                folder = checkpoint() if accelerator.is_main_process else None
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name or 'a stop request to another process'} at step {progress.step}; checkpoint {folder}; "
                    f"continue with the same command and --resume latest"
                )
            if progress.step >= options.steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    accelerator.wait_for_everyone()
    artifact = None
    if accelerator.is_main_process:
        metadata["tunelab_steps"] = str(progress.step)
        artifact = method.save(out_dir, metadata)
        if progress.skipped_steps:
            logger.warning("%d step(s) were skipped for NaN/inf values", progress.skipped_steps)
        logger.info("trained to step %d in %.1f s; wrote %s", progress.step, time.perf_counter() - started, artifact)
    accelerator.end_training()
    return artifact
