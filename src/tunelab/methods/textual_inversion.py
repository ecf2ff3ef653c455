"""Textual Inversion: learn new token embeddings; every other weight of the model stays as it was.

The new token gets one row per vector in each text encoder's embedding matrix
(`<tok>`, `<tok>_1`, ... as diffusers names them, so its loader and prompt expansion
agree). Only those rows receive gradients, and every other row is copied back
from the original after each optimizer step (weight decay touches the whole
matrix), so the model outside the new rows stays bit-identical.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.embedding import Embedding, read_embedding, write_embedding_pt, write_embedding_safetensors
from tunelab.methods.base import GenerateFlag, Method
from tunelab.models.family import family_for

logger = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")

# Textual Inversion's own prompt templates (Gal et al. 2022, as in diffusers' example script), shortened.
TEMPLATES = {
    "object": (
        "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
        "a photo of a clean {}", "a dark photo of the {}", "a photo of my {}", "a close-up photo of a {}",
        "a bright photo of the {}", "a good photo of the {}", "a photo of one {}", "a rendition of the {}",
        "a photo of the small {}", "a photo of the large {}", "a photo of a nice {}",
    ),
    "style": (
        "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
        "the painting in the style of {}", "a clean painting in the style of {}", "a dark painting in the style of {}",
        "a picture in the style of {}", "a cool painting in the style of {}", "a bright painting in the style of {}",
        "a good painting in the style of {}", "a close-up painting in the style of {}", "a rendition in the style of {}",
    ),
}




@dataclass
class TextualInversionOptions:
    token: str = option("the new token to learn, e.g. '<sks-toy>'; it must not be in the vocabulary yet")
    init_word: str = option("word whose embedding the vectors start from, e.g. 'toy' (one token, or --vectors tokens)")
    vectors: int = option("embedding vectors for the token (more: more capacity, fewer prompt tokens left)", default=1)
    templates: Literal["object", "style"] = option(
        "prompt templates for captions that are just the token or do not name it", default="object"
    )


@dataclass
class _EncoderRows:
    """The new rows of one text encoder's embedding matrix, and the original it is restored to."""

    embedding: torch.nn.Parameter  # (vocab + n, dim), fp32
    ids: torch.Tensor  # (n,) row of each new vector
    original: torch.Tensor  # (vocab + n, dim) the matrix as set up


class TextualInversionMethod(Method):
    name: ClassVar[str] = "textual_inversion"
    title: ClassVar[str] = "Textual Inversion"
    default_learning_rate: ClassVar[float] = 5e-3  # A1111's default
    options_schema: ClassVar[type] = TextualInversionOptions
    artifact_name: ClassVar[str] = "embedding.safetensors"
    pt_artifact_name: ClassVar[str] = "embedding.pt"
    # Flux.1's and SD3's T5 read every prompt too, and have no place for a learned token.
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl"})
    example_options: ClassVar[dict] = {"token": "<example-token>", "init_word": "toy"}
    generate_flag: ClassVar[GenerateFlag] = GenerateFlag(
        "embedding",
        "textual-inversion embedding, FILE[:TOKEN] (default token: the name in the file, else the file name); repeatable",
        "embeddings",
    )

    def __init__(self, options: TextualInversionOptions):
        token = options.token
        if not token or any(c.isspace() for c in token):
            raise TunelabError(f"--token must be one word without spaces, got {token!r}")
        if token != token.lower():
            raise TunelabError(f"--token must be lower case (CLIP lower-cases prompts): use {token.lower()!r}")
        if options.vectors < 1:
            raise TunelabError(f"--vectors must be at least 1, got {options.vectors}")
        if not options.init_word.strip():
            raise TunelabError("--init-word must not be empty")
        super().__init__(options)
        self.tokens = [token] + [f"{token}_{i}" for i in range(1, options.vectors)]  # diffusers' multi-vector names
        self.step = 0
        self._rows: dict[str, _EncoderRows] = {}
        self._random = random.Random(0)

    @property
    def default_prompt(self) -> str:
        # A caption that is only the token stands for "use the templates" (see training_captions).
        return self.options.token

    def setup(self, family) -> None:
        self.family = family
        self._random = random.Random(torch.initial_seed())  # templates repeat with the run's seed
        for name in family.text_encoder_names:
            self._rows[name] = self._add_rows(family.tokenizer_for(name), family.module(name))

    def _add_rows(self, tokenizer, encoder) -> _EncoderRows:
        """Add the tokens, start their rows at the init word, and let only those rows train."""
        init_ids = self._init_ids(tokenizer)
        self._check_new(tokenizer)
        tokenizer.add_tokens(self.tokens)
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(self.tokens))  # (n,)
        if int(ids.max()) >= encoder.get_input_embeddings().num_embeddings:
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # new rows are set just below
        lookup = encoder.get_input_embeddings()
        embedding, compute_dtype = lookup.weight, lookup.weight.dtype
        embedding.data = embedding.data.float()  # (vocab + n, dim): the trained rows stay fp32 under mixed precision
        if compute_dtype != torch.float32:
            # ... while the rest of the encoder computes in the mixed-precision dtype.
            lookup.register_forward_hook(lambda _module, _args, output, dtype=compute_dtype: output.to(dtype))
        ids = ids.to(embedding.device)
        embedding.data[ids] = embedding.data[init_ids.to(embedding.device)]  # (n, dim)
        encoder.requires_grad_(False)
        embedding.requires_grad_(True)
        # Only the new rows get a gradient, so gradient clipping and Adam see just them.
        trained = torch.zeros(embedding.shape[0], 1, device=embedding.device)  # (vocab + n, 1)
        trained[ids] = 1.0
        embedding.register_hook(lambda grad: grad * trained.to(grad.dtype))
        return _EncoderRows(embedding, ids, embedding.detach().clone())

    def _check_new(self, tokenizer) -> None:
        vocabulary = tokenizer.get_vocab()
        for token in self.tokens:
            if token in vocabulary or len(tokenizer.tokenize(token)) == 1:
                raise TunelabError(
                    f"token {token!r} is already in the tokenizer's vocabulary; choose a new one such as '<{token}-1>'"
                )

    def _init_ids(self, tokenizer) -> torch.Tensor:
        word = self.options.init_word
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) == 1:
            return torch.tensor(ids * len(self.tokens))  # (n,) every vector starts at the word
        if len(ids) == len(self.tokens):
            return torch.tensor(ids)  # (n,) vector i starts at the word's token i
        pieces = " ".join(tokenizer.convert_ids_to_tokens(ids))
        raise TunelabError(
            f"--init-word {word!r} is {len(ids)} tokens ({pieces}); use a word that is one token, "
            f"or --vectors {len(ids)} to start one vector from each"
        )

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {name: self.family.module(name) for name in self._rows}

    def learned_parameter_count(self) -> int:
        # The optimizer holds whole embedding tables, but only the new rows change.
        return sum(len(rows.ids) * rows.embedding.shape[1] for rows in self._rows.values())

    def trainable_parameters(self) -> list[dict]:
        return [{"params": [rows.embedding], "name": name} for name, rows in self._rows.items()]

    def training_captions(self, captions: list[str]) -> list[str]:
        return [self._expand(self._with_token(caption)) for caption in captions]

    def _with_token(self, caption: str) -> str:
        """The caption if it names the token; a template if it is only the token; else template + caption."""
        token = self.options.token
        if caption.strip() == token:
            return self._random.choice(TEMPLATES[self.options.templates]).format(token)
        if token in caption:
            return caption
        return f"{self._random.choice(TEMPLATES[self.options.templates]).format(token)}, {caption}"

    def _expand(self, caption: str) -> str:
        # One token per vector, as diffusers' pipelines expand the prompt at generation time.
        return caption.replace(self.options.token, " ".join(self.tokens))

    def after_step(self, step: int) -> None:
        self.step = step
        with torch.no_grad():
            for rows in self._rows.values():
                learned = rows.embedding[rows.ids].clone()  # (n, dim)
                rows.embedding.copy_(rows.original)
                rows.embedding[rows.ids] = learned

    def state_dict(self) -> dict:
        """Saved with checkpoints, so a resumed run draws the templates the straight run would."""
        version, internal, gauss = self._random.getstate()
        return {"template_rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["template_rng"]
        self._random.setstate((version, tuple(internal), gauss))

    def embedding(self) -> Embedding:
        vectors = {name: rows.embedding.detach()[rows.ids].float().cpu() for name, rows in self._rows.items()}
        return Embedding(vectors, name=self.options.token, step=self.step)

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        embedding = self.embedding()
        write_embedding_pt(embedding, Path(out_dir) / self.pt_artifact_name)
        return write_embedding_safetensors(embedding, Path(out_dir) / self.artifact_name, metadata)


    # --- generation
    @classmethod
    def prompt_identifier(cls, training: dict) -> str | None:
        return training.get("token")

    @classmethod
    def generate_options(cls, artifact: Path, identifier: str | None) -> dict:
        return {cls.generate_flag.field: [f"{artifact}:{identifier}"]}

    @classmethod
    def parse_spec(cls, spec: str) -> tuple[Path, str | None]:
        return parse_token_path(spec)

    @classmethod
    def requested(cls, options, tagged, adapters_dir):
        return [cls.parse_spec(spec) for spec in options.embedding]

    @classmethod
    def attach(cls, pipeline, specs, adapters_dir=None):
        """Flag embeddings, then every embedding in DIR/embeddings/ (one that does not fit this model is skipped with
        a warning, as A1111 lists it as skipped). Returns ((file, token) per embedding, the tokens added per encoder)."""
        family = family_for(pipeline)
        before = {name: set(family.tokenizer_for(name).get_added_vocab()) for name in family.text_encoder_names}
        tokens = attach_embeddings(pipeline, specs)
        loaded = [(path, token) for (path, _), token in zip(specs, tokens)]
        for path, token in folder_embeddings(adapters_dir):
            try:
                attach_embeddings(pipeline, [(path, token)])
            except TunelabError as error:
                logger.warning("embedding %s skipped: %s", path.name, error)
                continue
            loaded.append((path, token))
        added = {name: sorted(set(family.tokenizer_for(name).get_added_vocab()) - known) for name, known in before.items()}
        return loaded, added

    @classmethod
    def detach(cls, pipeline, handle) -> None:
        family = family_for(pipeline)
        for name, tokens in handle.items():
            if tokens:
                pipeline.unload_textual_inversion(tokens, tokenizer=family.tokenizer_for(name), text_encoder=family.module(name))

    @classmethod
    def a1111_fields(cls, entries):
        return {"Embeddings": " ".join(token for _, token in entries)} if entries else {}


def parse_token_path(spec: str) -> tuple[Path, str | None]:
    """'FILE' or 'FILE:TOKEN' -> (path, token or None); the split is taken only after an embedding suffix."""
    head, separator, tail = spec.rpartition(":")
    if separator and tail and Path(head).suffix.lower() in EMBEDDING_SUFFIXES:
        return Path(head), tail
    return Path(spec), None


def attach_embeddings(pipeline, specs: list[tuple[Path, str | None]]) -> list[str]:
    """Add each embedding's token to the pipeline (diffusers' loader); returns the tokens.

    The token is the one given, else the name the file holds, else the file name (as A1111 does)."""
    if not specs:
        return []
    family = family_for(pipeline)
    tokens = []
    for path, token in specs:
        if not path.is_file():
            raise TunelabError(f"embedding file not found: {path}")
        embedding = read_embedding(path)
        token = token or embedding.name or path.stem
        if any(c.isspace() for c in token):
            raise TunelabError(f"embedding token {token!r} of {path.name} has spaces; pass one as {path}:TOKEN")
        if set(embedding.vectors) != set(family.text_encoder_names):
            raise TunelabError(
                f"{path.name} holds vectors for {len(embedding.vectors)} text encoder(s), "
                f"this model has {len(family.text_encoder_names)}"
            )
        for name, vectors in embedding.vectors.items():
            encoder, tokenizer = family.module(name), family.tokenizer_for(name)
            width = encoder.get_input_embeddings().embedding_dim
            if vectors.shape[-1] != width:
                raise TunelabError(
                    f"{path.name} has embedding width {vectors.shape[-1]}, but this model's {name} expects {width} "
                    "(an embedding for another base model)"
                )
            if token in tokenizer.get_vocab():
                raise TunelabError(f"token {token!r} of {path.name} is already in use; pass another as {path}:TOKEN")
            try:
                pipeline.load_textual_inversion(vectors, token=token, tokenizer=tokenizer, text_encoder=encoder)
            except ValueError as error:
                raise TunelabError(f"cannot load embedding {path}: {str(error).splitlines()[0]}") from None
        tokens.append(token)
    return tokens


def folder_embeddings(folder: Path | None) -> list[tuple[Path, str]]:
    """(file, token = file stem) for each embedding in DIR/embeddings/, sorted by name, as A1111 loads them."""
    if folder is None or not (folder / "embeddings").is_dir():
        return []
    files = sorted(p for p in (folder / "embeddings").iterdir() if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)
    return [(path, path.stem) for path in files]
