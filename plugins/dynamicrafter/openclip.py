"""OpenCLIP ViT-H/14 state dicts (as inside the released checkpoints) → transformers CLIP key layout.

The text encoder sits under `cond_stage_model.model.` (FrozenOpenCLIPEmbedder: token_embedding,
positional_embedding, transformer.resblocks.*, ln_final, text_projection), the image encoder under
`embedder.model.visual.` (FrozenOpenCLIPImageEmbedderV2: conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.*, ln_post, proj). Attention weights are fused (`attn.in_proj_weight` = [q; k; v]) and
are split into q/k/v projections. `split_checkpoint` already removed the `cond_stage_model.` / `embedder.`
prefixes; the functions accept the remaining `model.` / `model.visual.` keys, or the bare ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from priorswap.errors import PriorswapError


def _strip(state: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _blocks(state: Mapping[str, Any], out_prefix: str) -> dict[str, Any]:
    """transformer.resblocks.i.* → <out_prefix>layers.i.* (q/k/v split from the fused projection)."""
    out: dict[str, Any] = {}
    names = {
        "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    }
    for key, value in state.items():
        if not key.startswith("transformer.resblocks."):
            continue
        index, rest = key[len("transformer.resblocks."):].split(".", 1)
        base = f"{out_prefix}layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # weight / bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        module, _, param = rest.rpartition(".")
        if module not in names:
            raise PriorswapError(f"unexpected OpenCLIP transformer key {key!r}")
        out[f"{base}{names[module]}.{param}"] = value
    return out


def text_to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """OpenCLIP text tower → `CLIPTextModel` keys (`text_model.`-prefixed; strip it for transformers ≥ 5
    with `for_model`). `text_projection` and `logit_scale` are dropped (the UNet reads hidden states)."""
    s = _strip(state, ("model.",))
    if "token_embedding.weight" not in s:
        raise PriorswapError("no OpenCLIP text encoder (token_embedding.weight) in the state dict")
    out = {
        "text_model.embeddings.token_embedding.weight": s["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": s["positional_embedding"],
        "text_model.final_layer_norm.weight": s["ln_final.weight"],
        "text_model.final_layer_norm.bias": s["ln_final.bias"],
    }
    out.update(_blocks(s, "text_model.encoder."))
    return out


def vision_to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """OpenCLIP visual tower → `CLIPVisionModelWithProjection` keys (`vision_model.*`, `visual_projection`)."""
    s = _strip(state, ("model.visual.", "visual."))
    if "conv1.weight" not in s:
        raise PriorswapError("no OpenCLIP image encoder (visual.conv1.weight) in the state dict")
    out = {
        "vision_model.embeddings.patch_embedding.weight": s["conv1.weight"],
        "vision_model.embeddings.class_embedding": s["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": s["positional_embedding"],
        "vision_model.pre_layrnorm.weight": s["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": s["ln_pre.bias"],
        "vision_model.post_layernorm.weight": s["ln_post.weight"],
        "vision_model.post_layernorm.bias": s["ln_post.bias"],
        "visual_projection.weight": s["proj"].t().contiguous(),
    }
    out.update(_blocks(s, "vision_model.encoder."))
    return out


def for_model(state: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Adapts `text_model.`-prefixed keys to the model's own layout (transformers ≥ 5 has no such prefix)."""
    keys = set(model.state_dict())
    if any(k.startswith("text_model.") for k in keys):
        return dict(state)
    return {k.removeprefix("text_model."): v for k, v in state.items()}
