"""The trainable policy: the Qwen3-VL model and the SQR heads as one module, so that DeepSpeed
partitions, steps and checkpoints them together and one forward yields both the token logits
and the soft query tokens (already mapped into the embedder's input space).
"""

from __future__ import annotations

import torch
from torch import nn

from learner.shared_prefix import suffix_hidden
from models.sqr_heads import SQRHeads

POLICY_PREFIX = "policy."
HEADS_PREFIX = "heads."


class PolicyWithHeads(nn.Module):
    def __init__(self, policy: nn.Module, heads: SQRHeads):
        super().__init__()
        self.policy = policy
        self.heads = heads

    def forward(self, slot_index: torch.Tensor | None = None, **inputs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(logits [B, S, V] of each row's suffix, soft tokens in the embedder's input space
        [B, N, D_emb], soft tokens [B, N, D]) or (logits, None, None) without slots; `inputs`
        as learner.batch.collate builds them.

        `slot_index` [B, N] holds the suffix positions of each row's slot tokens; the soft
        tokens are the final (normed) hidden states there through refine_projector (the
        latent policy's mean), then append_projector, exactly as the rollout computes them
        from vLLM's hidden states.
        """
        hidden = suffix_hidden(self.policy, **inputs)
        logits = self.policy.lm_head(hidden)
        if slot_index is None:
            return logits, None, None
        soft = self.heads.soft_tokens(at_slots(hidden, slot_index))
        return logits, self.heads.to_embedder(soft), soft

    def slot_states(self, slot_index: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """[B, N, H] the final hidden states at the slots, what the heads read."""
        return at_slots(suffix_hidden(self.policy, **inputs), slot_index)


def at_slots(hidden: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
    return hidden.gather(1, slot_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def set_trainable(module: PolicyWithHeads, heads: bool, vision: bool) -> None:
    """Language model always; SQR heads only where a loss reaches them (SFT's InfoNCE, the
    latent policy's loss in GRPO): AdamW
    keeps moving a parameter on stale moments even when its gradient is zero; vision tower
    on request (it is large in production and already well trained)."""
    module.requires_grad_(True)
    module.policy.model.visual.requires_grad_(vision)
    module.heads.requires_grad_(heads)


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Module state -> (policy tensors named as save_pretrained names them, heads tensors)."""
    policy = {k[len(POLICY_PREFIX):]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    heads = {k[len(HEADS_PREFIX):]: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
    return policy, heads
