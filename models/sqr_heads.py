"""The two small heads that Soft Query Refinement adds to the policy.

`refine_projector` (H -> D) turns the policy's final hidden states at the latent slots
into soft query tokens; `append_projector` (D -> D_emb) maps them into the embedder's
input-embedding space, where they are inserted next to the query's text tokens. They
live beside the policy checkpoint, in its `sqr/` subfolder (vLLM loads every
*.safetensors at the top level), so that the vLLM workers, the learner and the query
encoder load the very same weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

SUBDIR = "sqr"
WEIGHTS_FILE = "heads.safetensors"
CONFIG_FILE = "heads.json"


@dataclass
class SQRHeadsConfig:
    policy_hidden: int  # H
    soft_dim: int  # D
    embedder_hidden: int  # D_emb
    num_tokens: int = 8


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class SQRHeads(nn.Module):
    def __init__(self, cfg: SQRHeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.refine_projector = _mlp(cfg.policy_hidden, cfg.soft_dim)
        self.append_projector = _mlp(cfg.soft_dim, cfg.embedder_hidden)
        # Zero output at first: with the embedder's residual read-out (Embedder.encode_queries)
        # a refinement then searches exactly as the unrefined query, and learning moves it.
        nn.init.zeros_(self.append_projector[-1].weight)
        nn.init.zeros_(self.append_projector[-1].bias)

    def soft_tokens(self, slot_hidden: torch.Tensor) -> torch.Tensor:
        """[..., N, H] final hidden states at the slots -> [..., N, D] soft query tokens."""
        return self.refine_projector(slot_hidden)

    def to_embedder(self, soft_tokens: torch.Tensor) -> torch.Tensor:
        """[..., N, D] soft tokens -> [..., N, D_emb] embedder input embeddings."""
        return self.append_projector(soft_tokens)

    def save(self, policy_dir: str | Path) -> None:
        directory = Path(policy_dir) / SUBDIR
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))

    @classmethod
    def load(cls, policy_dir: str | Path, dtype: torch.dtype = torch.float32) -> SQRHeads:
        directory = Path(policy_dir) / SUBDIR
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"SQR heads missing: {directory / name}")
        heads = cls(SQRHeadsConfig(**json.loads((directory / CONFIG_FILE).read_text())))
        heads.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return heads.to(dtype)


# The latent policy (sqr.latent_sigma > 0): a soft-token action is drawn around the refine
# projector's output, and its density ratio is what GRPO clips (learner.losses).
def sample_latent(mean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """An action ~ N(mean, sigma^2 I), float32 like the soft tokens."""
    return (mean + sigma * rng.standard_normal(mean.shape)).astype(np.float32)


def gaussian_logprob(action: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(action; mean, sigma^2 I) summed over every dimension but the first: [B, ...] -> [B]."""
    if sigma <= 0:
        raise ValueError(f"a Gaussian latent policy needs sigma > 0, got {sigma}")
    sq = ((action - mean) ** 2).flatten(1).sum(-1)
    dims = action[0].numel()
    return -sq / (2 * sigma**2) - dims * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
