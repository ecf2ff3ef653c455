"""The single training loop: data -> latents -> noise -> denoiser -> weighted MSE -> optimizer.

It never branches on technique or model family: the method says what trains and how
it is saved, the family says how prompts are encoded and what the target is.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tunelab.config import to_json
from tunelab.data.buckets import BucketBatchSampler
from tunelab.data.dataset import build_dataset, collate
from tunelab.data.masks import masks_from_alpha, masks_from_folder
from tunelab.data.order import EpochShuffleSampler
from tunelab.data.paired import PriorPairedDataset, collate_paired
from tunelab.errors import TunelabError
from tunelab.models.family import check_family_options, family_for
from tunelab.models.loading import load_pipeline
from tunelab.training.checkpoints import resolve_resume, save_checkpoint
from tunelab.training.ema import WeightAverage
from tunelab.training.optimizers import OPTIMIZERS
from tunelab.training.options import TrainOptions
from tunelab.training.output import record_run
from tunelab.training.output_folder import claimed_output_folder, record_checkpoint_settings
from tunelab.training.prepare import validate_train_options
from tunelab.training.prior import cache_folder, default_cache_root, ensure_class_images, model_identity
from tunelab.training.state import Progress, load_training_state, save_training_state
from tunelab.training.step import prepare_step
from tunelab.training.stopping import StopRequest, TrainingInterrupted
from tunelab.training.validation import Validation, ValidationMetric, held_out_paths, metric_directions, start_validation

logger = logging.getLogger(__name__)


def make_loader(dataset, options: TrainOptions, collate):
    # Starting an iterator draws a worker seed from the loader's generator, or else from the global
    # RNG that dropout uses; a resumed run starts one where the straight run did not.
    worker_seeds = torch.Generator().manual_seed(options.seed)
    if options.batch_size > len(dataset):  # it would run (and be recorded) as a batch of the dataset's size
        raise TunelabError(f"--batch-size {options.batch_size} is larger than the {len(dataset)} training images (repeats "
                           f"included); use --batch-size {len(dataset)} or less")
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
    def dataset_from(folder, prompt, mask_source=None, exclude=frozenset()):
        return build_dataset(
            folder, prompt, resolution, center_crop=options.center_crop, random_flip=options.random_flip,
            bucket=options.buckets, seed=options.seed, caption_extension=options.caption_extension, mask_source=mask_source,
            exclude=exclude,
        )

    masks = masks_from_folder(options.masks) if options.masks else masks_from_alpha if options.alpha_mask else None
    prompt = options.prompt if options.prompt is not None else method.default_prompt
    instance = dataset_from(options.images, prompt, masks, held_out_paths(options, prompt))  # less --validation-split's
    method.see_training_images(instance.items)  # before class images are made: a refusal here costs no sampling
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


def write_samples(accelerator, family, method, options: TrainOptions, out_dir: Path, step: int, resolution: int, modules,
                  stop) -> list[Path]:
    """Sample images of the model as it is at this step; returns the files written."""
    written = []
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
                    **family.pipeline_text_options(),  # T5's length as the run trains (--t5-max-length)
                ).images[0]
            if stop.requested:
                return written  # an interrupted sample is not worth saving
            written.append(folder / f"step-{step:07d}-{index}.png")
            image.save(written[-1])
    finally:
        for module in modules:
            module.train()
    return written


@dataclass
class TrainingProgress:
    """What `on_progress` sees after each optimizer step; `request_stop()` ends the run at this step
    with a checkpoint, as Ctrl-C does."""

    step: int
    total: int
    loss: float
    learning_rate: float
    seconds_left: float
    samples: list[Path]  # sample images written at this step
    _stop: Any = field(repr=False)

    def request_stop(self) -> None:
        self._stop.request("a stop request (on_progress)")


@dataclass
class Session:
    """What one run's steps share."""

    options: TrainOptions
    method: Any
    accelerator: Any
    family: Any
    step: Any  # the prepared TrainingStep: optimizer, schedule, trained modules
    resolution: int
    out_dir: Path
    metadata: dict[str, str]
    stop: Any
    progress: Progress = field(default_factory=Progress)
    started: float = 0.0  # when the first step began (perf_counter)
    first_step: int = 0  # the step this process started from (a resumed run starts later)
    average: WeightAverage | None = None  # --ema
    on_progress: Callable[[TrainingProgress], None] | None = None
    validation: Validation | None = None  # --validate-every


def train(options: TrainOptions, method, resolved_config: dict, family_options: dict | None = None,
          on_progress: Callable[[TrainingProgress], None] | None = None,
          validation_metrics: list[ValidationMetric] | None = None) -> Path:
    """Train `method` with `options`; returns the artifact's path (None on the processes that do not write it).
    `on_progress`, if given, is called after every optimizer step (main process); `validation_metrics` are
    scores a layer above measures at each validation (evaluate/validation_scores.py)."""
    validate_train_options(options, method.min_steps)
    metric_directions(options, validation_metrics or [])  # --keep-best names one of them, before loading
    try:
        with StopRequest() as stop, claimed_output_folder(options.out, resolved_config, overwrite=options.overwrite):
            return _run(options, method, resolved_config, family_options or {}, stop, on_progress, validation_metrics or [])
    finally:
        # accelerate keeps mixed precision in process-wide state; clear it so the next run in this
        # process (tests, the comparison bench) may choose its own.
        AcceleratorState._reset_state()


def _run(options: TrainOptions, method, resolved_config: dict, family_options: dict, stop, on_progress,
         validation_metrics: list[ValidationMetric]) -> Path:
    out_dir = Path(options.out)
    resume_from = resolve_resume(options.resume, out_dir)
    accelerator = Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.gradient_accumulation,
        log_with=None if options.log_with == "none" else options.log_with,
        project_dir=str(out_dir / "logs"),
    )
    set_seed(options.seed)
    family = load_family(options, method, family_options)
    resolution = options.resolution or family.native_resolution
    dataset, collate = build_training_data(options, method, family, resolution, accelerator, stop)
    if dataset.skipped:
        logger.warning("skipped %d unusable image(s); first: %s (%s)", len(dataset.skipped), *dataset.skipped[0])
    step = prepare_step(options, method, family, accelerator)
    loader, order = make_loader(dataset, options, collate)  # order: its sampler, shuffled by (seed, epoch)
    loader = accelerator.prepare(loader)
    metadata = {"tunelab_config": to_json(resolved_config), "tunelab_method": method.name}
    session = Session(options, method, accelerator, family, step, resolution, out_dir, metadata, stop, on_progress=on_progress)
    if options.ema:
        trained = [parameter for group in step.optimizer.param_groups for parameter in group["params"]]
        session.average = WeightAverage(trained, options.ema_decay, options.ema_update_every)
    start_records(session, resolved_config)
    restore(session, resume_from)
    session.validation = start_validation(options, method, resolution, out_dir, validation_metrics, session.progress.step,
                                          accelerator.is_main_process)
    run_steps(session, dataset, loader, order)
    return finish(session)


def load_family(options: TrainOptions, method, family_options: dict):
    """The model and its family, refused where another family's option was given."""
    pipeline = load_pipeline(options.model, seed=options.seed)
    family = family_for(pipeline, options, family_options)
    check_family_options(family, family_options)  # where only loading could tell the family
    return family


def start_records(session: Session, resolved_config: dict) -> None:
    """config.yaml beside the outputs, and the training log."""
    if session.accelerator.is_main_process:
        record_run(session.out_dir, resolved_config)
    if session.accelerator.is_main_process and session.options.log_with != "none":
        session.accelerator.init_trackers("tunelab", config={k: str(v) for k, v in resolved_config.items()})


def restore(session: Session, resume_from: Path | None) -> None:
    if resume_from is not None:
        step = session.step
        session.progress = load_training_state(resume_from, step.optimizer, step.lr_scheduler, session.accelerator.scaler,
                                               session.method, session.average)
        logger.info("resumed from %s at step %d", resume_from, session.progress.step)
    elif session.options.resume == "latest":
        logger.info("no checkpoint in %s yet: starting from the beginning", session.out_dir)


@contextmanager
def weights_for_use(session: Session) -> Iterator[None]:
    """The weights sample images and saved artifacts show: a schedule-free optimizer's evaluation
    sequence, the moving average with --ema; the trained ones come back after, exactly."""
    with evaluation_sequence(session), session.average.applied() if session.average is not None else nullcontext():
        yield


@contextmanager
def evaluation_sequence(session: Session) -> Iterator[None]:
    """A schedule-free optimizer's evaluation weights in place. Its train() interpolates back, which is not
    exact in floating point, so the trained values are kept aside and put back bit for bit."""
    if not OPTIMIZERS[session.options.optimizer].schedule_free:
        yield
        return
    parameters = [parameter for group in session.step.optimizer.param_groups for parameter in group["params"]]
    kept = [parameter.detach().clone() for parameter in parameters]
    session.step.optimizer.eval()
    try:
        yield
    finally:
        session.step.optimizer.train()
        with torch.no_grad():
            for parameter, value in zip(parameters, kept):
                parameter.copy_(value)


def checkpoint(session: Session) -> Path:
    step = session.step

    def contents(folder: Path) -> None:
        save_training_state(folder, step.optimizer, step.lr_scheduler, session.accelerator.scaler, session.progress,
                            session.method, session.average)
        with weights_for_use(session):
            session.method.save(folder, session.metadata)
        record_checkpoint_settings(folder, session.metadata["tunelab_config"])

    return save_checkpoint(session.out_dir, session.progress.step, session.options.keep_last, contents)


def run_steps(session: Session, dataset, loader, order) -> None:
    """Micro-batches until the run has its optimizer steps; resumes mid-epoch where a checkpoint left off."""
    options, progress, accelerator = session.options, session.progress, session.accelerator
    session.started, session.first_step = time.perf_counter(), progress.step
    bar = tqdm(total=options.steps, initial=progress.step, desc=f"train {session.method.name}",
               disable=not accelerator.is_local_main_process)
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
            result = session.step(batch, progress.epoch, progress.batches_in_epoch - 1)
            if result.synced:
                if result.finite:
                    after_optimizer_step(session, result, bar)
                else:
                    count_nonfinite(progress, options)
            stop_if_asked(session)
            if progress.step >= options.steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()


def count_nonfinite(progress: Progress, options: TrainOptions) -> None:
    """A step with NaN/inf loss or gradients was skipped; too many in a row stop the run."""
    progress.skipped_steps += 1
    progress.nonfinite_in_a_row += 1
    logger.warning("step %d: NaN/inf loss or gradients; step skipped (%d in a row)", progress.step + 1, progress.nonfinite_in_a_row)
    if progress.nonfinite_in_a_row >= options.max_nonfinite_steps:
        raise TunelabError(
            f"{progress.nonfinite_in_a_row} steps in a row had NaN/inf loss or gradients; stopped at step "
            f"{progress.step} (lower --learning-rate, or use bf16 or fp32 instead of fp16)"
        )


def after_optimizer_step(session: Session, result, bar) -> None:
    """Count the step, log it, and write samples and checkpoints when they are due."""
    options, progress, accelerator = session.options, session.progress, session.accelerator
    progress.nonfinite_in_a_row = 0
    progress.step += 1
    session.method.after_step(progress.step)
    if session.average is not None:
        session.average.after_step(progress.step)
    logs = {"loss": result.loss.detach().item(), "lr": session.step.lr_scheduler.get_last_lr()[0]}
    if options.class_prompt is not None:
        logs |= {"instance_loss": result.instance_loss.detach().item(), "prior_loss": result.prior_loss.detach().item()}
    bar.update(1)
    bar.set_postfix({k: f"{v:.4f}" if k != "lr" else f"{v:.2e}" for k, v in logs.items()})
    if options.log_with != "none":
        accelerator.log(logs, step=progress.step)
    if session.validation is not None and session.validation.due(progress.step):
        session.validation.run(session, weights_for_use)  # on every process: the same draws, no collective left waiting
    if not accelerator.is_main_process:
        return
    samples = []
    if options.sample_every and progress.step % options.sample_every == 0:
        with session.step.encoders_on_device(), weights_for_use(session):
            samples = write_samples(accelerator, session.family, session.method, options, session.out_dir, progress.step,
                                    session.resolution, session.step.modules, session.stop)
    if options.checkpoint_every and progress.step % options.checkpoint_every == 0:
        checkpoint(session)
    if session.on_progress is not None:
        per_step = (time.perf_counter() - session.started) / (progress.step - session.first_step)
        session.on_progress(TrainingProgress(progress.step, options.steps, logs["loss"], logs["lr"],
                                             per_step * (options.steps - progress.step), samples, session.stop))


def stop_if_asked(session: Session) -> None:
    """On a signal, every process stops at this step; the main one leaves a checkpoint to resume from."""
    if stop_requested(session.accelerator, session.stop):
        folder = checkpoint(session) if session.accelerator.is_main_process else None
        raise TrainingInterrupted(
            f"stopped by {session.stop.signal_name or 'a stop request to another process'} at step {session.progress.step}; "
            f"checkpoint {folder}; continue with the same command and --resume latest"
        )


def finish(session: Session) -> Path | None:
    """Write the artifact (main process) and close the run."""
    accelerator, progress = session.accelerator, session.progress
    accelerator.wait_for_everyone()
    artifact = None
    if accelerator.is_main_process:
        session.metadata["tunelab_steps"] = str(progress.step)
        with weights_for_use(session):
            artifact = session.method.save(session.out_dir, session.metadata)
        if progress.skipped_steps:
            logger.warning("%d step(s) were skipped for NaN/inf values", progress.skipped_steps)
        logger.info("trained to step %d in %.1f s; wrote %s", progress.step, time.perf_counter() - session.started, artifact)
    accelerator.end_training()
    return artifact
