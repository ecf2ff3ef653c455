"""tunelab: personalize text-to-image diffusion models.

    import tunelab
    result = tunelab.train("lora", model="tiny-sd", images="photos/", out="runs/toy", prompt="a photo of sks toy")
    images = tunelab.generate(model="tiny-sd", prompt="a photo of sks toy", lora=[str(result.artifact)])

`train`, `generate`, `Generator`, `compare` and `demo` are in `tunelab.api` (docs/api.md); they load
with their first use, so `import tunelab` stays fast.
"""

from tunelab.errors import Interrupted, TunelabError

__version__ = "0.1.0"
PUBLIC = ("train", "generate", "generate_options", "Generator", "compare", "demo", "TrainResult")
__all__ = [*PUBLIC, "TunelabError", "Interrupted", "__version__"]


def __getattr__(name: str):
    if name in PUBLIC:
        from tunelab import api  # deferred: torch and diffusers load on the first call, not on `import tunelab`

        return getattr(api, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
