"""tunelab: personalize text-to-image diffusion models.

    import tunelab
    result = tunelab.train("lora", model="tiny-sd", images="photos/", out="runs/toy", prompt="a photo of sks toy")
    images = tunelab.generate(model="tiny-sd", prompt="a photo of sks toy", lora=[str(result.artifact)])

`train`, `generate`, `Generator`, `compare`, `demo` and `evaluate` are in `tunelab.api` (docs/api.md); they
load with their first use, so `import tunelab` stays fast.
"""

import types

import tunelab.evaluate as _evaluate_package  # an empty package: cheap
from tunelab.errors import Interrupted, TunelabError

__version__ = "0.1.0"
PUBLIC = ("train", "generate", "generate_options", "Generator", "compare", "demo", "TrainResult")
__all__ = [*PUBLIC, "evaluate", "TunelabError", "Interrupted", "__version__"]


def __getattr__(name: str):
    if name in PUBLIC:
        from tunelab import api  # deferred: torch and diffusers load on the first call, not on `import tunelab`

        return getattr(api, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """`tunelab.evaluate` names both the package of metric modules (`tunelab.evaluate.dreambench`) and the API
    function `tunelab.evaluate(images=..., reference=..., ...)`: calling the package calls the function."""

    def __call__(self, **options):
        from tunelab import api  # deferred: torch and transformers load on the first call, not on `import tunelab`

        return api.evaluate(**options)


_evaluate_package.__class__ = _CallablePackage
