"""Options every training run has, whatever the technique; one flag per field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunelab.config import option
from tunelab.training.optimizers import OPTIMIZERS


@dataclass
class TrainOptions:
    model: str = option("base model: preset name (tiny-sd), diffusers folder or .safetensors/.ckpt file")
    images: str = option("folder of training images (optional .txt captions, or kohya '10_sks dog' subfolders)")
    out: str = option("output folder")
    prompt: str | None = option("instance prompt for images without a caption, e.g. 'a photo of sks toy'", default=None)
    steps: int = option("optimizer steps", default=500)
    resolution: int | None = option("training resolution in pixels (default: the model's native size)", default=None)
    batch_size: int = option("images per micro-batch", default=1)
    gradient_accumulation: int = option("micro-batches per optimizer step", default=1)
    learning_rate: float | None = option(
        "learning rate (default: the technique's own, see `tunelab train TECHNIQUE --help`)",
        default=None,
    )
    lr_scheduler: Literal["constant", "cosine", "linear", "cosine_with_restarts", "polynomial"] = option(
        "learning-rate schedule after warm-up", default="constant")
    lr_cycles: int = option("cosine_with_restarts: number of hard restarts", default=1)
    lr_power: float = option("polynomial: power of the decay (1: linear)", default=1.0)
    lr_warmup_steps: int = option("linear warm-up steps", default=0)
    optimizer: Literal[tuple(OPTIMIZERS)] = option(
        "adamw; adamw8bit (bitsandbytes, GPU only); prodigy (sets its own step size: lr 1.0); adafactor; lion "
        "(default lr: the technique's / 3); adamw_schedulefree (no schedule needed)", default="adamw")
    optimizer_args: list[str] = option(
        "the optimizer's own arguments, KEY=VALUE ... (e.g. d_coef=2 for prodigy); over its recommended settings",
        default_factory=list)
    weight_decay: float = option("AdamW weight decay", default=1e-2)
    max_grad_norm: float = option("gradient clipping norm (0 disables)", default=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = option("mixed precision for the frozen weights and compute", default="no")
    gradient_checkpointing: bool = option("trade compute for memory in the denoiser and text encoder", default=False)
    gradient_checkpointing_mode: Literal["full", "selective"] = option(
        "with --gradient-checkpointing: full recomputes each denoiser block; selective keeps its matmul, "
        "convolution and attention outputs and recomputes only element-wise ops (less recompute, less saved)",
        default="full",
    )
    cache_latents: bool = option("encode each distinct training image with the VAE once", default=False)
    cache_text_embeddings: bool = option(
        "encode each distinct caption with the text encoder(s) once (needs frozen text encoders)", default=False
    )
    offload_encoders: bool = option(
        "keep the VAE and frozen text encoders in CPU memory, on the GPU only while they fill the latent and "
        "text-embedding caches (needs --cache-latents and --cache-text-embeddings)",
        default=False,
    )
    compile: Literal["none", "regional", "full"] = option(
        "torch.compile the denoiser: regional compiles each repeated block once (short warm-up), full the whole model",
        default="none",
    )
    attention_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = option(
        "attention kernels; auto is PyTorch's choice except cuDNN on a GPU (its backward failed on Flux shapes)",
        default="auto",
    )
    adamw_implementation: Literal["auto", "foreach", "fused"] = option(
        "AdamW kernels: fused (one kernel per step) or foreach; auto: fused on a GPU, foreach on the CPU", default="auto"
    )
    channels_last: bool = option("channels-last memory layout for the denoiser's convolutions", default=False)
    lora_fp32_inputs: bool = option(
        "under mixed precision, cast activations to fp32 before LoRA layers (PEFT's default; autocast casts them "
        "straight back, so the result is the same; off by default)",
        default=False,
    )
    ema: bool = option("keep an exponential moving average of the trained weights; it is what is saved and sampled",
                       default=False)
    ema_decay: float = option("EMA decay per update", default=0.9999)
    ema_update_every: int = option("update the EMA every N optimizer steps", default=1)
    min_snr_gamma: float | None = option("min-SNR-gamma loss weighting, e.g. 5 (off by default)", default=None)
    noise_offset: float = option("noise offset, e.g. 0.05 (0 disables)", default=0.0)
    caption_dropout: float = option(
        "probability of training a sample on the empty caption, e.g. 0.1, so the model keeps an unconditional "
        "prediction for classifier-free guidance (kohya's caption_dropout_rate; 0 disables)", default=0.0,
    )
    masks: str | None = option(
        "masked loss: folder of same-name grayscale masks (white = learn, black = ignore, grey in between)", default=None)
    alpha_mask: bool = option("masked loss from each training image's alpha channel", default=False)
    caption_extension: str = option("file extension of caption files next to the images", default=".txt")
    shuffle_caption: bool = option("shuffle the comma-separated tags of each caption every time it is used (seeded)",
                                   default=False)
    keep_tokens: int = option("with --shuffle-caption / --caption-tag-dropout: the first N tags stay in place", default=0)
    caption_tag_dropout: float = option("probability of leaving out each tag (after the kept ones), e.g. 0.1", default=0.0)
    seed: int = option("random seed for weights init, data order and noise", default=0)
    center_crop: bool = option("center crop (else a seeded random crop)", default=True)
    random_flip: bool = option("random horizontal flips", default=False)
    buckets: bool = option("aspect-ratio buckets instead of square crops", default=False)
    sample_every: int = option("write sample images every N steps (0: never)", default=0)
    sample_prompts: list[str] = option("prompts for sample images (default: the instance prompt)", default_factory=list)
    sample_steps: int = option("sampling steps for sample images", default=20)
    checkpoint_every: int = option("save a checkpoint every N steps (0: only the final artifact)", default=0)
    keep_last: int = option("checkpoints to keep (0: all)", default=0)
    resume: str | None = option("resume from 'latest' (the newest checkpoint in --out) or a checkpoint folder", default=None)
    validate_every: int = option("validate every N steps and at the last step (0: never)", default=0)
    validation_images: str | None = option(
        "folder of validation images (same caption rules as --images): a loss at fixed timesteps and noise", default=None)
    validation_split: float = option("or hold this share of --images out of training for validation, e.g. 0.2",
                                     default=0.0)
    validation_timesteps: int = option("fixed (timestep, noise) draws per validation image", default=4)
    validation_seed: int = option("seed of the validation draws and split, apart from --seed (the same in runs to compare)",
                                  default=0)
    validation_subject: str | None = option(
        "a toyworld subject (bullseye, checker, flag): each validation also scores the subject fidelity of "
        "images of the instance prompt", default=None)
    validation_samples: int = option("images per validation for --validation-subject (seeds from --validation-seed)",
                                     default=4)
    keep_best: str | None = option(
        "keep the artifact of the best validation in OUT/best/: validation_loss, or subject_fidelity with "
        "--validation-subject", default=None)
    max_nonfinite_steps: int = option("stop after this many steps in a row with NaN/inf loss or gradients", default=5)
    class_prompt: str | None = option("prior preservation: prompt of the class, e.g. 'a photo of a dog'", default=None)
    class_images: str | None = option("folder of class images to use instead of generating them", default=None)
    num_class_images: int = option("class images to generate (and reuse from the cache)", default=100)
    prior_loss_weight: float = option("weight of the prior-preservation loss", default=1.0)
    class_cache: str | None = option("cache folder for generated class images (default ~/.cache/tunelab)", default=None)
    class_sample_steps: int = option("sampling steps for generated class images", default=25)
    overwrite: bool = option("reuse an output folder that holds a different run", default=False)
    log_with: Literal["tensorboard", "none"] = option("training log backend (logs under OUT/logs)", default="tensorboard")
    num_workers: int = option("data-loader worker processes", default=0)
    num_processes: int = option(
        "training processes, started by accelerate: one per GPU, or CPU processes (gloo) without a GPU; "
        "--batch-size is per process", default=1,
    )
