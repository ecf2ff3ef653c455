"""Sampler names users know from A1111/ComfyUI -> diffusers scheduler class and settings."""

from __future__ import annotations

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


def make_scheduler(name: str, base_config):
    """A scheduler of the named kind, keeping the model's own beta schedule and prediction type."""
    import diffusers

    if name not in SAMPLERS:
        import difflib

        close = difflib.get_close_matches(name, SAMPLERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TunelabError(f"unknown sampler {name!r}{hint}; available: {', '.join(SAMPLERS)}")
    class_name, overrides = SAMPLERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
