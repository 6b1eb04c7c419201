"""The learner's forward with each distinct prompt run once.

GRPO's G samples of a query see the same prompt (the query and its top-1 video): forwarding
every row whole runs that prompt, video tower included, G times. Here a batch is split into
prefixes (one per distinct prompt) and suffixes (from the token whose logit predicts a row's
first learned token on): the prefixes run once, their keys and values are kept, and each row's
suffix attends to its prefix's through a cache, so gradients reach the prompt's activations
through its keys and values. Same math as the whole-row forward (tested), with the prompt's
tokens counted once per group: at Qwen3-VL-2B the prompt is ~93 % of a turn (6.6k video tokens
against 512 response tokens).

Both caches are replay-safe (the prefix one overwrites, the suffix one stores nothing), so a
gradient-checkpointing recompute sees the same states; `allow_checkpointing` tells transformers
so, which otherwise drops a cache under checkpointing.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _PrefixLayer(DynamicLayer):
    """Keeps the prefix pass's keys and values of one decoder layer."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states


class _SuffixLayer(DynamicLayer):
    """Each suffix row attends to its group's prefix keys and values, then its own."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


def allow_checkpointing(model) -> None:
    """Keep the caches under transformers' gradient checkpointing (their updates replay safely)."""
    for layer in model.model.language_model.layers:
        layer._can_checkpoint_with_cache = True


def suffix_hidden(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor,
                  prefix_mm_token_type_ids: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, group: torch.Tensor,
                  pixel_values_videos: torch.Tensor | None = None,
                  video_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
    """Final (normed) hidden states [B, S, D] of the suffix rows.

    `model` is a Qwen3-VL ForConditionalGeneration. Prefixes [P, Lp] and suffixes [B, S] are
    right-padded; `group` [B] names each suffix's prefix. Positions are Qwen3-VL's M-RoPE ones
    of the whole row: the prefix's from the video grids, the suffix's text positions after.
    """
    core = model.model
    positions, deltas = core.get_rope_index(prefix_ids, prefix_mm_token_type_ids,
                                            video_grid_thw=video_grid_thw, attention_mask=prefix_mask)
    cache = Cache(layers=[_PrefixLayer() for _ in core.language_model.layers])
    core(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions,
         past_key_values=cache, mm_token_type_ids=prefix_mm_token_type_ids,
         pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw)
    shared = Cache(layers=[_SuffixLayer(layer.keys[group], layer.values[group])
                           for layer in cache.layers])
    first = (prefix_mask.sum(-1, keepdim=True) + deltas.to(prefix_mask.device))[group]
    suffix_positions = (first + torch.arange(input_ids.shape[1], device=input_ids.device))
    out = core(input_ids=input_ids, attention_mask=torch.cat([prefix_mask[group], attention_mask], 1),
               position_ids=suffix_positions.unsqueeze(0).expand(3, -1, -1),
               past_key_values=shared)
    return out.last_hidden_state


def suffix_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, S, V] of the suffix rows (`inputs` as learner.batch.collate builds them)."""
    model = getattr(model, "module", model)  # a DeepSpeed engine's module (ZeRO-3 reference)
    hf = {k: v for k, v in inputs.items() if k != "slot_index"}
    return model.lm_head(suffix_hidden(model, **hf))
