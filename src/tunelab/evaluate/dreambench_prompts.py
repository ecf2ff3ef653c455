"""DreamBench's evaluation prompts and subjects, as data.

From `dataset/prompts_and_classes.txt` of the public google/dreambooth repository (Ruiz et al. 2023):
25 prompts for object subjects, 25 for live subjects (cats and dogs); `{}` stands for the subject,
its unique identifier and class noun ("sks dog").
"""

from __future__ import annotations

from tunelab.errors import TunelabError

_SHARED_SCENES = (
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
)
_SHARED_PROPERTIES = (
    "a red {}",
    "a purple {}",
    "a shiny {}",
    "a wet {}",
    "a cube shaped {}",
)
OBJECT_PROMPTS = _SHARED_SCENES + (
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
) + _SHARED_PROPERTIES
LIVE_SUBJECT_PROMPTS = _SHARED_SCENES + (
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
) + _SHARED_PROPERTIES

PROMPT_SETS = {"dreambench_object": OBJECT_PROMPTS, "dreambench_live": LIVE_SUBJECT_PROMPTS}

# DreamBench's 30 subjects (folder name -> class noun); cats and dogs are the live subjects.
SUBJECT_CLASSES = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal", "berry_bowl": "bowl",
    "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat", "clock": "clock", "colorful_sneaker": "sneaker",
    "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog",
    "duck_toy": "toy", "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon", "robot_toy": "toy",
    "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase", "wolf_plushie": "stuffed animal",
}
LIVE_CLASSES = ("cat", "dog")


def prompt_set_for_class(class_noun: str) -> str:
    """DreamBench's rule: live subjects (cats, dogs) get the live-subject prompts, everything else the object prompts."""
    return "dreambench_live" if class_noun in LIVE_CLASSES else "dreambench_object"


def subject_prompts(prompt_set: str, subject: str) -> list[str]:
    """The set's prompts for one subject, e.g. subject "sks dog"."""
    if prompt_set not in PROMPT_SETS:
        raise TunelabError(f"unknown prompt set {prompt_set!r} (prompt sets: {', '.join(PROMPT_SETS)})")
    return [template.format(subject) for template in PROMPT_SETS[prompt_set]]
