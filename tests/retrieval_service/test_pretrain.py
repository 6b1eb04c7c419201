import json

import pytest
import torch

from config.schema import TinyEmbedderPretrainConfig, VideoConfig
from models.tiny import MANIFEST
from retrieval_service.pretrain import pretrain_embedder, symmetric_info_nce


def test_symmetric_info_nce_rewards_aligned_pairs():
    v = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    aligned = symmetric_info_nce(v, v, tau=0.5)
    shuffled = symmetric_info_nce(v, v.roll(1, dims=0), tau=0.5)
    logits = v @ v.T / 0.5
    by_hand = -(logits.diag() - logits.logsumexp(dim=1)).mean() / 2 \
        - (logits.diag() - logits.logsumexp(dim=0)).mean() / 2
    assert aligned.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert aligned < shuffled


def test_session_embedder_was_pretrained_into_a_real_retriever(cfg, model_dirs):
    """The held-out numbers the README quotes: from near chance to a weak real retriever."""
    report = json.loads((model_dirs[1].parent / MANIFEST).read_text())["embedder_pretrain"]
    assert report["steps"] == cfg.model.tiny_embedder_pretrain.steps
    assert report["last_loss"] < report["first_loss"]
    assert report["heldout_r1_after"] >= report["heldout_r1_before"] + 0.1


def test_pretraining_needs_steps(tmp_path, model_dirs):
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_embedder(model_dirs[1], tmp_path, VideoConfig(), TinyEmbedderPretrainConfig(steps=0), 0)
