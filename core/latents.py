"""Latent spaces as data (ComfyUI's latent_formats idea): code reads these, never hard-codes 0.18215."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LatentSpace:
    """The space a denoiser works in: latents = (vae_latent − shift) · scale.

    `family` names the autoencoder weights (two spaces with the same family differ only by an
    affine map); `downsample` is the pixel-to-latent stride.
    """

    name: str
    channels: int
    scale: float = 1.0
    shift: float = 0.0
    downsample: int = 8
    family: str = ""

    def same_as(self, other: LatentSpace) -> bool:
        """The same space under any name (a folder's inline space equals its registry twin)."""
        return replace(self, name=other.name) == other

    def affine_to(self, other: LatentSpace) -> tuple[float, float]:
        """(k, c) with other_latent = k·self_latent + c, for two spaces of the same autoencoder."""
        k = other.scale / self.scale
        c = (self.shift - other.shift) * other.scale
        return k, c
