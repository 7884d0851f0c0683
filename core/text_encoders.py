"""CLIP text encoders as the diffusers pipelines use them, loaded on first use from a pipeline folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .hub import load_component


class ClipTextEncoder:
    """A `tokenizer/` + `text_encoder/` pair (transformers CLIPTokenizer / CLIPTextModel), loaded lazily.

    `folder` is a folder or a callable returning one (e.g. a hub fetch done only when a prompt must
    really be encoded). `layer="last"` gives the last hidden states (Stable Diffusion 1.x, the
    InstructPix2Pix pipeline); `"penultimate"` the penultimate layer's followed by the final
    LayerNorm (OpenCLIP-style, Stable Diffusion 2.x / DynamiCrafter).
    """

    def __init__(
        self,
        folder: Path | Callable[[], Path],
        *,
        allow_pickle: bool = False,
        dtype: torch.dtype | None = None,
        device: Any = "cpu",
        layer: str = "last",
    ) -> None:
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        self._folder = folder
        self.allow_pickle, self.dtype, self.device, self.layer = allow_pickle, dtype, device, layer
        self._parts: tuple[Any, Any] | None = None

    def parts(self) -> tuple[Any, Any]:
        """(tokenizer, encoder), loading them on the first call."""
        if self._parts is None:
            from transformers import CLIPTextModel, CLIPTokenizer

            folder = Path(self._folder() if callable(self._folder) else self._folder)
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            encoder = load_component(CLIPTextModel, folder, "text_encoder", allow_pickle=self.allow_pickle,
                                     dtype=self.dtype)
            device = self.device() if callable(self.device) else self.device
            self._parts = (tokenizer, encoder.to(device).eval().requires_grad_(False))
        return self._parts

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Hidden states (B, tokens, dim), prompts padded to the tokenizer's max length as the pipelines do."""
        tokenizer, encoder = self.parts()
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(encoder.device)
        if self.layer == "last":
            return encoder(ids)[0]
        out = encoder(ids, output_hidden_states=True)
        final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers ≥ 5 is flat
        return final_norm(out.hidden_states[-2])

    def release(self) -> None:
        """Drops the loaded encoder (a prior needs it only to encode its null condition once)."""
        self._parts = None
