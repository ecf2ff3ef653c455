"""The comparison's configuration: shared settings, then a list of experiments (technique + training options)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import checked_values, closest, option, read_config_file
from tunelab.data.folder import scan_image_folder
from tunelab.errors import TunelabError
from tunelab.evaluate.dreambench_prompts import PROMPT_SETS
from tunelab.evaluate.dreambench_protocol import Embedders
from tunelab.evaluate.embedders import clip_folder, dino_folder
from tunelab.evaluate.protocol import METRICS
from tunelab.evaluate.sampling import GUIDANCE, STEPS
from tunelab.methods import METHODS, method_class
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.training.prepare import run_schemas

# Training options the bench sets itself, the same for every experiment.
SET_BY_COMPARE = ("model", "images", "out", "prompt", "resume", "overwrite", "num_processes", "log_with")
# The subject settings an experiment may give itself (its own subject: e.g. two LoRAs of two concepts, composed).
SUBJECT_KEYS = ("subject", "prompt", "class_word", "identifier")


@dataclass
class CompareOptions:
    model: str = option("base model for every experiment (preset, diffusers folder or checkpoint)", default="toyworld")
    subject: str = option(
        "toyworld subject the techniques learn (bullseye, checker, flag), or a folder of your own images "
        "(its quality is measured with clip/dino given; without them only time, memory, size and cost)",
        default="bullseye",
    )
    prompt: str | None = option("instance prompt for a folder subject, e.g. 'a photo of sks dog'", default=None)
    metrics: list[str] = option(f"quality metrics to report ({', '.join(METRICS)})", default_factory=lambda: list(METRICS))
    images_per_prompt: int = option("images per evaluation prompt (same seeds for every experiment)", default=8)
    sample_steps: int = option("sampling steps for evaluation images", default=STEPS)
    guidance: float = option("classifier-free guidance for evaluation images", default=GUIDANCE)
    seed: int = option("first evaluation seed", default=1000)
    usd_per_hour: float = option("machine price for the cost column (the study's RTX 3090 rate)", default=0.29)
    clip: str | None = option("folder of a CLIP model and its processor: DreamBench's CLIP-I and CLIP-T on the DreamBench "
                              "prompts replace toyworld's metrics, for any subject (docs/evaluation.md)", default=None)
    dino: str | None = option("folder of a DINO ViT or DINOv2 model and its image processor: DreamBench's DINO", default=None)
    prompt_set: str | None = option(f"DreamBench prompts for the CLIP/DINO evaluation ({', '.join(PROMPT_SETS)}; "
                                    "default: live-subject prompts for a cat or dog, object prompts otherwise)", default=None)
    class_word: str | None = option("a folder subject's class noun ('dog'): CLIP/DINO evaluation prompts name the subject "
                                    "'<identifier> <class_word>'", default=None)
    identifier: str | None = option("a folder subject's identifier in evaluation prompts (default 'sks'; a textual-inversion "
                                    "experiment uses its token)", default=None)
    precision_study: str | None = option("an experiment whose artifact is also stored in fp32, fp16 and bf16: the report "
                                         "gives each one's size and how far its images move from fp32's", default=None)


# Settings added after comparisons were first written: left out of the fingerprint while unset, so a folder
# written before them still holds the same comparison.
UNSET_NOT_FINGERPRINTED = ("clip", "dino", "prompt_set", "class_word", "identifier")


@dataclass
class CompositionOptions:
    loras: list[str] = option("the two LoRA experiments to compose, each trained on its own subject")
    rank: int | None = option("rank of the SVD merge (default: the larger of the two LoRAs' ranks)", default=None)


@dataclass
class Experiment:
    name: str
    technique: str
    training: dict[str, Any] = field(default_factory=dict)  # `tunelab train <technique>` options, checked
    subject: dict[str, Any] = field(default_factory=dict)  # its own subject settings (SUBJECT_KEYS), if any

    def fingerprint(self) -> str:
        record = dataclasses.asdict(self)
        if not self.subject:
            del record["subject"]  # experiments on the shared subject keep the fingerprints they had
        return json.dumps(record, sort_keys=True)


@dataclass
class CompareConfig:
    options: CompareOptions
    experiments: list[Experiment]
    composition: CompositionOptions | None = None

    def options_for(self, experiment: Experiment | None) -> CompareOptions:
        """The settings an experiment runs with: the shared ones, its own subject settings in place of the
        shared subject's (a subject of its own brings its own prompt, class word and identifier, never the shared ones)."""
        if experiment is None or not experiment.subject:
            return self.options
        return dataclasses.replace(self.options, **{key: experiment.subject.get(key) for key in SUBJECT_KEYS})

    def subject_options(self) -> list[CompareOptions]:
        """One per distinct subject the experiments learn, the shared subject first (each gets its own base)."""
        found = {json.dumps([getattr(self.options, key) for key in SUBJECT_KEYS]): self.options}
        for experiment in self.experiments:
            options = self.options_for(experiment)
            found.setdefault(json.dumps([getattr(options, key) for key in SUBJECT_KEYS]), options)
        return list(found.values())

    def fingerprint(self) -> str:
        """What makes results comparable: the shared settings (experiments may be added or changed one by one)."""
        settings = dataclasses.asdict(self.options)
        for key in UNSET_NOT_FINGERPRINTED:
            if settings[key] is None:
                del settings[key]
        del settings["precision_study"]  # a study beside the results, not a setting they depend on
        return json.dumps(settings, sort_keys=True)

    @property
    def embedders(self) -> Embedders:
        return Embedders(self.options.clip, self.options.dino)


def _experiment(entry: Any, index: int, where: str) -> Experiment:
    if not isinstance(entry, dict):
        raise TunelabError(f"{where}: experiment {index + 1} must be a mapping with 'name' and 'technique'")
    entry = dict(entry)
    name, technique = str(entry.pop("name", "")).strip(), entry.pop("technique", None)
    if not name or technique is None:
        raise TunelabError(f"{where}: experiment {index + 1} needs a 'name' and a 'technique'")
    if technique not in METHODS:
        raise TunelabError(f"{where}: experiment {name!r}: unknown technique {technique!r}{closest(str(technique), METHODS)} "
                           f"(techniques: {', '.join(METHODS)})")
    subject = _own_subject(entry, name, where)
    for key in entry:
        if str(key).replace("-", "_") in SET_BY_COMPARE:
            raise TunelabError(f"{where}: experiment {name!r}: {key!r} is set by the comparison for every experiment")
    training = checked_values(run_schemas(technique), entry, f"{where}, experiment {name!r}")
    return Experiment(name, technique, training, subject)


def _own_subject(entry: dict, name: str, where: str) -> dict[str, Any]:
    """An experiment's own `subject:` and, for a folder subject, its `prompt`, `class_word`, `identifier`
    (taken out of `entry`); those three without a subject of its own are the comparison's to set."""
    given = {str(key).replace("-", "_"): entry.pop(key) for key in list(entry) if str(key).replace("-", "_") in SUBJECT_KEYS}
    if not given:
        return {}
    if "subject" not in given:
        raise TunelabError(f"{where}: experiment {name!r}: {next(iter(given))!r} belongs with a 'subject' of the "
                           "experiment's own; the comparison sets it for the shared subject")
    return checked_values([CompareOptions], given, f"{where}, experiment {name!r}")


def _check_subject(options: CompareOptions, where: str) -> None:
    if options.subject in SUBJECTS:
        return
    folder = Path(options.subject).expanduser()
    if not folder.is_dir():
        raise TunelabError(f"{where}: subject {options.subject!r} is neither a toyworld subject ({', '.join(SUBJECTS)}) nor a folder")
    if not scan_image_folder(folder, options.prompt):
        raise TunelabError(f"{where}: subject folder {folder} holds no images")
    if not options.prompt:
        raise TunelabError(f"{where}: a folder subject needs 'prompt', the instance prompt (e.g. 'a photo of sks dog')")


def _check_embedders(options: CompareOptions, where: str) -> None:
    """The CLIP/DINO folders hold such models (their configs read, no weights loaded), and the prompts can name the subject."""
    try:
        if options.clip:
            clip_folder(options.clip)
        if options.dino:
            dino_folder(options.dino)
    except TunelabError as error:
        raise TunelabError(f"{where}: {error}") from None
    if options.prompt_set is not None and options.prompt_set not in PROMPT_SETS:
        raise TunelabError(f"{where}: unknown prompt_set {options.prompt_set!r}{closest(options.prompt_set, PROMPT_SETS)} "
                           f"(prompt sets: {', '.join(PROMPT_SETS)})")
    if (options.clip or options.dino) and options.subject not in SUBJECTS and not options.class_word:
        raise TunelabError(f"{where}: the CLIP/DINO evaluation of a folder subject needs 'class_word', its class noun "
                           "(e.g. 'dog'), for DreamBench's prompts")


def load_compare_config(path: str | Path) -> CompareConfig:
    data = read_config_file(path)
    return compare_config_from(data, str(path))


def compare_config_from(data: dict[str, Any], where: str) -> CompareConfig:
    data = dict(data)
    entries = data.pop("experiments", None)
    if not entries or not isinstance(entries, list):
        raise TunelabError(f"{where}: 'experiments' must be a non-empty list of experiments")
    composition = data.pop("composition", None)
    options = CompareOptions(**checked_values([CompareOptions], data, where))
    unknown = [metric for metric in options.metrics if metric not in METRICS]
    if unknown:
        raise TunelabError(f"{where}: unknown metric {unknown[0]!r}{closest(unknown[0], METRICS)} (metrics: {', '.join(METRICS)})")
    _check_subject(options, where)
    _check_embedders(options, where)
    experiments = [_experiment(entry, index, where) for index, entry in enumerate(entries)]
    names = [experiment.name for experiment in experiments]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate or "base" in names:
        raise TunelabError(f"{where}: experiment names must be unique and not 'base' ({duplicate or 'base'!r})")
    if options.precision_study is not None and options.precision_study not in names:
        raise TunelabError(f"{where}: precision_study names no experiment: {options.precision_study!r}"
                           f"{closest(options.precision_study, names)} (experiments: {', '.join(names)})")
    config = CompareConfig(options, experiments)
    for experiment in experiments:
        if experiment.subject:
            own = config.options_for(experiment)
            _check_subject(own, f"{where}, experiment {experiment.name!r}")
            _check_embedders(own, f"{where}, experiment {experiment.name!r}")
    reserved = [name for name in names if name in base_names(config)]
    if reserved:
        raise TunelabError(f"{where}: experiment name {reserved[0]!r} is the name of a base evaluation; choose another")
    config.composition = _composition(composition, config, where) if composition is not None else None
    return config


def subject_label(options: CompareOptions) -> str:
    """A toyworld subject's name, or a subject folder's name."""
    return options.subject if options.subject in SUBJECTS else Path(options.subject).expanduser().name


def base_names(config: CompareConfig) -> list[str]:
    """The untuned base's evaluation on each subject: 'base' on the shared one, 'base-LABEL' on another."""
    names = ["base"]
    for options in config.subject_options()[1:]:
        name = f"base-{subject_label(options)}"
        while name in names:  # two folders of one name
            name += "-2"
        names.append(name)
    return names


def _composition(value: Any, config: CompareConfig, where: str) -> CompositionOptions:
    """Two LoRA experiments of this comparison, each on a subject of its own."""
    if not isinstance(value, dict):
        raise TunelabError(f"{where}: 'composition' must be a mapping, e.g. {{loras: [lora_a, lora_b]}}")
    composition = CompositionOptions(**checked_values([CompositionOptions], value, f"{where}, composition"))
    if len(composition.loras) != 2 or len(set(composition.loras)) != 2:
        raise TunelabError(f"{where}: composition: 'loras' names two different experiments, got {composition.loras}")
    if composition.rank is not None and composition.rank < 1:
        raise TunelabError(f"{where}: composition: 'rank' must be at least 1, got {composition.rank}")
    experiments = {experiment.name: experiment for experiment in config.experiments}
    for name in composition.loras:
        if name not in experiments:
            raise TunelabError(f"{where}: composition names no experiment: {name!r}{closest(name, experiments)} "
                               f"(experiments: {', '.join(experiments)})")
        experiment = experiments[name]
        refusal = method_class(experiment.technique).composition_refusal(experiment.training)
        if refusal:
            raise TunelabError(f"{where}: composition: experiment {name!r} cannot be composed: {refusal}")
    first, second = (config.options_for(experiments[name]).subject for name in composition.loras)
    if first == second:
        raise TunelabError(f"{where}: composition: {composition.loras[0]!r} and {composition.loras[1]!r} learn the same "
                           f"subject ({first}); give one of them a 'subject:' of its own")
    return composition
