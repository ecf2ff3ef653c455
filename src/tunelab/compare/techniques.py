"""How the bench attaches each technique's artifact for generation: the same flags `tunelab generate` takes."""

from __future__ import annotations

from pathlib import Path

# technique -> GenerateOptions fields that load its artifact on the base model
ATTACH = {
    "lora": lambda artifact, token: {"lora": [str(artifact)]},
    "dreambooth": lambda artifact, token: {"model": str(artifact)},
    "textual_inversion": lambda artifact, token: {"embedding": [f"{artifact}:{token}"]},
    "hypernetwork": lambda artifact, token: {"hypernetwork": [str(artifact)]},
}
TECHNIQUES = tuple(ATTACH)


def artifact_bytes(artifact: Path) -> int:
    """Size on disk of a file, or of every file in a folder (a DreamBooth pipeline)."""
    if artifact.is_dir():
        return sum(path.stat().st_size for path in artifact.rglob("*") if path.is_file())
    return artifact.stat().st_size
