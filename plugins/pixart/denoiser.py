"""PixArt-α's transformer as a σ-space denoiser; its null condition is T5("") as the pipeline encodes it.

The null condition (T5 hidden states and attention mask of the empty prompt) is cached on disk with
`priorswap.nullcache`, keyed on the transformer folder (for a hub repo its path holds the pinned
revision). Only on a cache miss are `text_encoder/` and `tokenizer/` fetched and T5 loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from priorswap import Denoiser, LoadRequest
from priorswap.configs import read_json
from priorswap.errors import PriorswapError, WeightsUnavailable
from priorswap.hub import folders_on_demand, load_component
from priorswap.nullcache import cache_dir, cached_null
from priorswap.vae import describe_vae

MAX_LENGTH = 120  # PixArtAlphaPipeline's max_sequence_length: PixArt-α saw 120 T5 tokens in training
NULL_KEY = f"pixart-alpha:t5-empty-prompt:max_length={MAX_LENGTH}"
TEXT_FOLDERS = ["text_encoder", "tokenizer"]


class PixArtDenoiser(Denoiser):
    """PixArtTransformer2DModel. Conditions: T5 hidden states and their attention mask; the 1024 model's
    micro-conditions (resolution, aspect ratio) are derived from the input's size, as the pipeline does."""

    def __init__(
        self, transformer, null: tuple[torch.Tensor, torch.Tensor], scheduler_config: dict, request: LoadRequest
    ) -> None:
        self.init_discrete(transformer, scheduler_config, request)
        cfg = transformer.config
        self.learned_sigma = cfg.out_channels == 2 * cfg.in_channels
        self.micro_conditions = bool(transformer.use_additional_conditions)
        embeds, mask = null
        self.null_embeds = embeds.to(transformer.device, transformer.dtype)
        self.null_mask = mask.to(transformer.device)
        self.resolution = cfg.sample_size * request.latent_space.downsample  # the network's own size

    def added_conditions(self, x: torch.Tensor) -> dict:
        """`added_cond_kwargs` for a batch: the pixel size and aspect ratio (1024 model), else None."""
        if not self.micro_conditions:
            return {"resolution": None, "aspect_ratio": None}
        height, width = (s * self.latent_space.downsample for s in x.shape[-2:])
        b = x.shape[0]
        resolution = torch.tensor([[height, width]], dtype=x.dtype, device=x.device).repeat(b, 1)
        aspect_ratio = torch.tensor([[float(height / width)]], dtype=x.dtype, device=x.device).repeat(b, 1)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.net(
            x,
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=t,
            added_cond_kwargs=self.added_conditions(x),
        ).sample

    def null_condition(self) -> dict:
        return {"encoder_hidden_states": self.null_embeds, "encoder_attention_mask": self.null_mask}

    def condition_modules(self) -> list[torch.nn.Module]:
        """The cross-attention projections and the caption projection (T5 states → width): all see the
        condition alone, so a run computes them once."""
        caption = getattr(self.net, "caption_projection", None)
        return [*super().condition_modules(), *([caption] if caption is not None else [])]


def load_tokenizer(folder: Path):
    """The pipeline's T5 tokenizer from `folder/tokenizer`."""
    from transformers import AutoTokenizer

    where = folder / "tokenizer"
    try:
        return AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (ImportError, ValueError, OSError) as e:
        hint = ""
        if (where / "spiece.model").is_file() and not (where / "tokenizer.json").is_file():
            hint = " It holds a sentencepiece model only (spiece.model): pip install sentencepiece protobuf."
        raise PriorswapError(f"could not load the T5 tokenizer in {where}: {e}.{hint}") from e


def encode_prompt(folder: Path, prompt: str = "", allow_pickle: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 hidden states (1, 120, D) and attention mask (1, 120) of `prompt`, as PixArtAlphaPipeline.encode_prompt
    computes them without caption cleaning (lower-cased, stripped, padded to 120 tokens), in float32."""
    from transformers import T5EncoderModel

    tokenizer = load_tokenizer(folder)
    encoder = load_component(T5EncoderModel, folder, "text_encoder", allow_pickle=allow_pickle, dtype=torch.float32)
    tokens = tokenizer(
        [prompt.lower().strip()],
        padding="max_length",
        max_length=MAX_LENGTH,
        truncation=True,
        return_attention_mask=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return hidden, tokens.attention_mask


def text_encoder_folder(request: LoadRequest) -> Path:
    """A folder with text_encoder/ and tokenizer/: for a hub repo they are fetched now (cache miss only)."""
    try:
        return folders_on_demand(request, TEXT_FOLDERS, 'the PixArt null condition (T5 encoding of "")')
    except WeightsUnavailable as e:
        raise PriorswapError(
            f"{e}. It is not cached yet for {request.folder}: restore the T5 text encoder for one run (the "
            f"encoding is then cached in {cache_dir()} and T5 is not needed again)."
        ) from None


def cached_null_condition(request: LoadRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, mask) of the empty prompt from the on-disk cache; T5 is loaded only on a miss."""
    anchor = request.folder / "transformer"
    encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def compute(i: int) -> torch.Tensor:
        if "null" not in encoded:
            encoded["null"] = encode_prompt(text_encoder_folder(request), "", request.allow_pickle)
        return encoded["null"][i]

    embeds = cached_null(anchor, NULL_KEY + ":embeds", lambda: compute(0))
    mask = cached_null(anchor, NULL_KEY + ":mask", lambda: compute(1))
    return embeds, mask


def load(request: LoadRequest) -> PixArtDenoiser:
    # PixArtTransformer2DModel reads the hub repos' legacy "Transformer2DModel" configs (same weight names)
    from diffusers import PixArtTransformer2DModel

    folder = request.folder
    transformer = load_component(
        PixArtTransformer2DModel, folder, "transformer", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    null = cached_null_condition(request)
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return PixArtDenoiser(transformer, null, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local PixArtAlphaPipeline folder (a prior only: it has no task)."""
    from priorswap.loading import schedule_fields

    if not (folder / "vae" / "config.json").is_file():
        raise PriorswapError(
            f"{folder} has no vae/config.json, so its latent space is unknown: add a registry entry for it "
            "with `latent_space` (see docs/registry.md)"
        )
    tcfg = read_json(folder / "transformer" / "config.json")
    scfg = read_json(folder / "scheduler" / "scheduler_config.json")
    space = describe_vae(folder / "vae")
    return {
        "roles": ["prior"],
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": tcfg.get("sample_size", 128) * space["downsample"],
        "learned_sigma": tcfg.get("out_channels", 8) == 2 * tcfg.get("in_channels", 4),
        "description": f'local PixArt-α folder {folder.name} (null condition: T5 encoding of "")',
    }
