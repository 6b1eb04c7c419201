"""The learner forwards each distinct prompt once (learner.shared_prefix): the same log-probs
and gradients as forwarding every row whole, with or without gradient checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learner.batch import VideoInputs, collate, prefix_groups
from learner.grpo import GRPOLoss, grpo_rows
from learner.module import PolicyWithHeads
from learner.shared_prefix import allow_checkpointing, suffix_logits
from models.loading import load_policy
from tests.learner.logprobs import response_logprobs


@pytest.fixture(scope="module")
def rows(cfg, processor, grpo_samples):
    return grpo_rows(grpo_samples, VideoInputs(processor, cfg.video))


def test_rows_with_one_prompt_and_video_share_one_prefix(rows, grpo_turns, processor):
    group, firsts = prefix_groups(rows)
    assert group == [0, 0, 1, 1] and firsts == [0, 2]  # 2 queries x 2 samples
    batch = collate(rows, processor, merge=2, device="cpu")
    assert batch.inputs["prefix_ids"].shape[0] == 2
    assert batch.inputs["video_grid_thw"].shape[0] == 2  # one video per prefix, not per row
    # the same prompt with another video is another prefix
    other = dataclasses.replace(rows[1], video={k: v.clone() for k, v in rows[1].video.items()})
    other.video["pixel_values_videos"] += 1
    assert prefix_groups([rows[0], other])[0] == [0, 1]
    same = dataclasses.replace(rows[1], video={k: v.clone() for k, v in rows[1].video.items()})
    assert prefix_groups([rows[0], same])[0] == [0, 0]


def test_shared_prefix_logprobs_equal_whole_row_ones(rows, grpo_turns, processor, cfg, model_dirs):
    model = load_policy(model_dirs[0])[0].eval()
    want = response_logprobs(model, grpo_turns, processor, cfg)
    batch = collate(rows, processor, merge=2, device="cpu")
    with torch.no_grad():
        got, _ = GRPOLoss(cfg.learner, None).logprobs(lambda **x: (suffix_logits(model, x), None, None),
                                                      batch)
    for i, w in enumerate(want):
        learned = batch.mask[i].nonzero().flatten()
        torch.testing.assert_close(got[i, learned], w, atol=1e-5, rtol=1e-5)


def _grads(module, batch, cfg):
    module.zero_grad()
    lp, _ = GRPOLoss(cfg.learner, None).logprobs(module, batch)
    (lp * batch.mask).sum().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_gradients_equal_one_row_at_a_time(rows, processor, cfg, model_dirs,
                                                         checkpointing):
    """Gradients reach the prompt's activations through its keys and values: a batch whose rows
    share prefixes gives the gradient of the rows forwarded alone, summed."""
    policy, heads = load_policy(model_dirs[0])
    module = PolicyWithHeads(policy, heads).train()
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        allow_checkpointing(policy)
    shared = _grads(module, collate(rows, processor, 2, "cpu"), cfg)
    alone: dict[str, torch.Tensor] = {}
    for r in rows:
        for n, g in _grads(module, collate([r], processor, 2, "cpu"), cfg).items():
            alone[n] = alone.get(n, 0) + g
    assert shared.keys() == alone.keys()
    assert any(n.startswith("policy.model.language_model.layers.0.") for n in shared)
    for n in shared:
        torch.testing.assert_close(shared[n], alone[n], atol=1e-5, rtol=1e-4, msg=n)


def test_a_row_needs_a_prompt_token_before_its_first_learned_one(rows, processor):
    bad = dataclasses.replace(rows[0], mask=[0, 1] + rows[0].mask[2:])
    with pytest.raises(ValueError, match="row 0: its first token is learned"):
        collate([bad], processor, 2, "cpu")
