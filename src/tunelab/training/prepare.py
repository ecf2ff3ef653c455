"""One training run's settings, resolved and checked before any model loads.

`tunelab train`, the comparison bench and `bench speed` build runs here: the run's options, the
technique's, and each model family's own (Flux's timestep sampling, ...). Every option error is
reported here, in the first second, not after class images were generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.config import resolve, to_dict
from tunelab.errors import TunelabError
from tunelab.methods import check_family, method_class
from tunelab.methods.base import Method
from tunelab.models.family import check_family_options, family_class, option_groups
from tunelab.models.loading import pipeline_class_name
from tunelab.training.optimizers import check_optimizer_options, run_learning_rate
from tunelab.training.options import TrainOptions
from tunelab.training.prior import validate_prior_options
from tunelab.training.validation import check_validation_options


@dataclass
class Run:
    options: TrainOptions
    method: Method
    resolved: dict[str, Any]  # the full configuration, as config.yaml records it
    family_options: dict[type, Any]  # family-options dataclass -> its instance (FlowMatchingOptions, ...)


def run_schemas(method_name: str) -> list[type]:
    """Every option a run of this technique takes: the trainer's, the technique's, the families' own."""
    return [TrainOptions, method_class(method_name).options_schema, *option_groups()]


def validate_train_options(options: TrainOptions, min_steps: int = 1) -> None:
    """Values no run can use, whatever the model; `min_steps`: the technique's fewest (`Method.min_steps`)."""
    if options.steps < min_steps:
        raise TunelabError(f"--steps must be at least {min_steps}, got {options.steps}")
    if options.batch_size < 1 or options.gradient_accumulation < 1:
        raise TunelabError("--batch-size and --gradient-accumulation must be at least 1")
    if options.resolution is not None and (options.resolution < 8 or options.resolution % 8):
        # The VAE scales by 8 (as generate's --width refuses 33); buckets and kohya round to 64.
        raise TunelabError(f"--resolution must be a positive multiple of 8 pixels, got {options.resolution}")
    for flag, value in (("--checkpoint-every", options.checkpoint_every), ("--keep-last", options.keep_last),
                        ("--sample-every", options.sample_every), ("--lr-warmup-steps", options.lr_warmup_steps)):
        if value < 0:
            raise TunelabError(f"{flag} must be 0 or more, got {value}")
    if options.learning_rate is not None and not (math.isfinite(options.learning_rate) and options.learning_rate > 0):
        raise TunelabError(f"--learning-rate must be a positive number, got {options.learning_rate}")
    for flag, value in (("--weight-decay", options.weight_decay), ("--max-grad-norm", options.max_grad_norm),
                        ("--noise-offset", options.noise_offset)):
        if not (math.isfinite(value) and value >= 0):
            raise TunelabError(f"{flag} must be a number of 0 or more, got {value}")
    if not 0.0 <= options.caption_dropout < 1.0:
        raise TunelabError(f"--caption-dropout must be at least 0 and below 1, got {options.caption_dropout}")
    if not 0.0 <= options.caption_tag_dropout < 1.0:
        raise TunelabError(f"--caption-tag-dropout must be at least 0 and below 1, got {options.caption_tag_dropout}")
    if options.masks is not None and options.alpha_mask:
        raise TunelabError("--masks and --alpha-mask both give loss masks; choose one")
    if options.masks is not None and not Path(options.masks).expanduser().is_dir():
        raise TunelabError(f"--masks {options.masks} is not a folder")
    if options.keep_tokens < 0:
        raise TunelabError(f"--keep-tokens must be 0 or more, got {options.keep_tokens}")
    if not options.caption_extension.startswith(".") or len(options.caption_extension) < 2:
        raise TunelabError(f"--caption-extension must look like .txt, got {options.caption_extension!r}")
    if options.num_processes < 1:
        raise TunelabError(f"--num-processes must be at least 1, got {options.num_processes}")
    if not 0.0 < options.ema_decay < 1.0:
        raise TunelabError(f"--ema-decay must be between 0 and 1, got {options.ema_decay}")
    if options.ema_update_every < 1:
        raise TunelabError(f"--ema-update-every must be at least 1, got {options.ema_update_every}")
    validate_prior_options(options)
    check_validation_options(options)
    check_optimizer_options(options)


def check_model_fits(method: type[Method], model: str, family_options: dict[str, Any], train_options=None) -> None:
    """Refuse a technique or a family's option on a model they do not apply to, when the model's family is
    known without loading it (else the trainer checks the same once the model is loaded)."""
    class_name = pipeline_class_name(model)
    if class_name is None:
        return
    family = family_class(class_name)
    check_family(method, family.name, family.title)
    check_family_options(family, family_options)
    if train_options is not None:
        family.check_options(train_options)


def prepare_run(method_name: str, values: dict, config_path=None) -> Run:
    """Options, technique and the resolved configuration of one training run, as `tunelab train` builds them."""
    method_type = method_class(method_name)
    options, method_options, *family_instances = resolve(run_schemas(method_name), values, config_path)
    if options.learning_rate is None:
        options = replace(options, learning_rate=run_learning_rate(options, method_type))  # recorded as used
    validate_train_options(options, method_type.min_steps)
    family_options = dict(zip(option_groups(), family_instances))
    method = method_type(method_options)
    check_model_fits(method_type, options.model, family_options, options)
    # The technique is part of the run: a config.yaml written here is also a valid --config file.
    resolved = {"technique": method_name, **to_dict(options, method_options, *family_instances)}
    return Run(options, method, resolved, family_options)

