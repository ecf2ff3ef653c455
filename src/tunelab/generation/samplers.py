"""Sampler names users know from A1111/ComfyUI -> diffusers scheduler class and settings."""

from __future__ import annotations

import difflib

import diffusers

from tunelab.errors import TunelabError

# name -> (diffusers scheduler class, config overrides)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "dpm++_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpm++_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": False}),
    "dpm++_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++_sde": ("DPMSolverSinglestepScheduler", {}),
    "dpm++_sde_karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


# Flow-matching models (Flux.1, SD3) integrate an ODE in sigma; A1111/Forge call the same samplers by these names.
FLOW_SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
DEFAULT_SAMPLER = "dpm++_2m_karras"
DEFAULT_FLOW_SAMPLER = "euler"


def _is_flow_matching(base_config) -> bool:
    # A scheduler's config holds its own settings only; the shift ones are FlowMatch*'s alone.
    return "shift" in base_config and "base_image_seq_len" in base_config


def sampler_name(name: str | None, base_config) -> str:
    """The name given, or the model's default sampler (dpm++_2m_karras; euler for flow-matching models)."""
    if name is not None:
        return name
    return DEFAULT_FLOW_SAMPLER if _is_flow_matching(base_config) else DEFAULT_SAMPLER


def make_scheduler(name: str | None, base_config):
    """A scheduler of the named kind, keeping the model's own beta schedule (or flow shift) and prediction type."""
    name = sampler_name(name, base_config)
    table = FLOW_SAMPLERS if _is_flow_matching(base_config) else SAMPLERS
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        kind = " for a flow-matching model (Flux.1, SD3)" if table is FLOW_SAMPLERS else ""
        raise TunelabError(f"unknown sampler {name!r}{kind}{hint}; available: {', '.join(table)}")
    class_name, overrides = table[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
