"""LoRAs in a fixed low-dimensional basis (HyperDreamBooth's "lightweight DreamBooth").

Each adapted layer gets bases D (r, in) and U (out, r) shared by every subject; a subject is one small core
C (r, r) per layer, and its weight change is U C D. Many subjects then differ only in their cores, which a
network can predict, and a core set is an ordinary LoRA: down = C D, up = U, alpha = r (scale 1). The bases
start as random orthonormal ones; pretraining may learn them once over all its subjects (`trainable`) and
then freezes them, as the predictor only ever writes cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet


@dataclass
class FixedBasis:
    keys: list[str]  # "<component>.<module path>" of each adapted Linear, in core order
    downs: list[torch.Tensor]  # per layer (r, in), orthonormal rows
    ups: list[torch.Tensor]  # per layer (out, r), orthonormal columns

    @property
    def rank(self) -> int:
        return self.downs[0].shape[0]

    @property
    def layers(self) -> int:
        return len(self.keys)

    @classmethod
    def random(cls, shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> "FixedBasis":
        """Bases for layers of these weight shapes (key -> (out, in)), drawn from the seed."""
        generator = torch.Generator().manual_seed(seed)
        keys, downs, ups = [], [], []
        for key, (out_features, in_features) in shapes.items():
            if rank > min(out_features, in_features):
                raise TunelabError(f"basis rank {rank} is larger than layer {key} ({out_features}x{in_features}) allows")
            keys.append(key)
            downs.append(_orthonormal(in_features, rank, generator).T.contiguous())  # (r, in)
            ups.append(_orthonormal(out_features, rank, generator))  # (out, r)
        return cls(keys, downs, ups)

    def trainable(self) -> list[torch.Tensor]:
        """The bases as leaf tensors that take gradients (to learn them over many subjects' cores)."""
        self.downs = [down.detach().clone().requires_grad_(True) for down in self.downs]
        self.ups = [up.detach().clone().requires_grad_(True) for up in self.ups]
        return self.downs + self.ups

    def frozen(self) -> "FixedBasis":
        """The same bases, without gradients."""
        return FixedBasis(list(self.keys), [down.detach() for down in self.downs], [up.detach() for up in self.ups])

    def zero_cores(self, subjects: int = 1) -> torch.Tensor:
        return torch.zeros(subjects, self.layers, self.rank, self.rank)  # (S, L, r, r)

    def lora_set(self, cores: torch.Tensor) -> LoraSet:
        """One subject's cores (L, r, r) as a plain LoRA: down = C D (r, in), up = U (out, r), alpha = r."""
        if cores.shape != (self.layers, self.rank, self.rank):
            raise TunelabError(f"cores of shape {tuple(cores.shape)} do not fit a basis of {self.layers} layers of rank {self.rank}")
        return {key: LoraModule((core.float() @ down).contiguous(), up.clone(), float(self.rank))
                for key, core, down, up in zip(self.keys, cores.detach(), self.downs, self.ups)}

    def tensors(self, prefix: str = "basis") -> dict[str, torch.Tensor]:
        """For a file: the bases by layer index (the keys travel in its metadata)."""
        named = {}
        for index, (down, up) in enumerate(zip(self.downs, self.ups)):
            named[f"{prefix}.{index}.down"], named[f"{prefix}.{index}.up"] = down, up
        return named

    @classmethod
    def from_tensors(cls, keys: list[str], tensors: dict[str, torch.Tensor], prefix: str = "basis") -> "FixedBasis":
        try:
            downs = [tensors[f"{prefix}.{index}.down"].float() for index in range(len(keys))]
            ups = [tensors[f"{prefix}.{index}.up"].float() for index in range(len(keys))]
        except KeyError as error:
            raise TunelabError(f"the file lacks basis tensor {error.args[0]}") from None
        return cls(list(keys), downs, ups)


def _orthonormal(size: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """(size, rank) with orthonormal columns: the Q of a Gaussian matrix's QR."""
    q, r = torch.linalg.qr(torch.randn(size, rank, generator=generator))
    return q * torch.sign(torch.diagonal(r))  # a unique sign per column, so the draw depends on the seed alone
