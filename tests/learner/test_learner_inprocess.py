"""One learner rank in the test process (gloo, no Ray): settings that change how a step is
computed, not what it computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from learner.learner import Learner


def test_gradient_checkpointing_changes_memory_not_the_update(process_group, learner_cfg,
                                                              model_dirs, grpo_samples):
    results = []
    for recompute in (False, True):
        cfg = dataclasses.replace(learner_cfg, learner=dataclasses.replace(
            learner_cfg.learner, gradient_checkpointing=recompute))
        learner = Learner(cfg, "grpo", model_dirs[0])
        try:
            assert learner.engine.module.policy.is_gradient_checkpointing == recompute
            # forwards of the first decoder layer: a prefix and a suffix pass per micro-batch
            # (learner.shared_prefix), each run again when recomputing
            calls = []
            layer = learner.engine.module.policy.model.language_model.layers[0]
            hook = layer.register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
            metrics = learner.grpo_step(grpo_samples)
            hook.remove()
            micro_batches = len(grpo_samples) // cfg.learner.micro_batch_size
            assert len(calls) == micro_batches * 2 * (2 if recompute else 1)
            results.append((metrics, learner.export_weights()[1]))
        finally:
            learner.close()
    (plain, plain_weights), (recomputed, recomputed_weights) = results
    for key in ("loss", "grad_norm", "logprob_mismatch"):
        assert recomputed[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert all(torch.allclose(plain_weights[n], recomputed_weights[n], atol=1e-6)
               for n in plain_weights)


def test_sft_eval_measures_without_changing_what_training_does(process_group, learner_cfg,
                                                               model_dirs, sft_examples):
    """The held-out pass before SFT must leave the steps after it exactly as without it."""
    held = [e for e in sft_examples if e.answer == "not_matched"]  # InfoNCE's rows
    train = sft_examples
    results = []
    for measure in (False, True):
        learner = Learner(learner_cfg, "sft", model_dirs[0], model_dirs[1])
        try:
            if measure:
                per_turn = learner.sft_eval(held)
                assert len(per_turn) == len(held) and all(r["infonce"] > 0 for r in per_turn)
                assert per_turn == learner.sft_eval(held)  # no state between the passes
            steps = [learner.sft_step(train) for _ in range(2)]
            results.append((steps, learner.export_weights()[1]))
        finally:
            learner.close()
    (plain, plain_w), (measured, measured_w) = results
    for a, b in zip(plain, measured, strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])
    assert all(torch.equal(plain_w[n], measured_w[n]) for n in plain_w)


def test_the_latent_policy_trains_the_heads_and_leaves_the_token_loss(process_group, learner_cfg,
                                                                     model_dirs, grpo_turns):
    """sigma > 0: the refined turns' soft-token actions add the latent PPO term, the heads
    train; the token loss is the same as without it (the slots follow the response). With
    lambda > 0 the refined turns' InfoNCE through the frozen embedder is logged and moves the
    heads another way."""
    from rollout.group import samples_of

    results = []
    for sigma, lam in ((0.0, 0.0), (0.05, 0.0), (0.05, 0.3)):
        cfg = dataclasses.replace(learner_cfg, sqr=dataclasses.replace(
            learner_cfg.sqr, latent_sigma=sigma, latent_infonce_lambda=lam))
        learner = Learner(cfg, "grpo", model_dirs[0], model_dirs[1] if lam else None)
        try:
            heads = learner.engine.module.heads
            shape = (cfg.sqr.num_tokens, heads.cfg.soft_dim)
            rng = np.random.default_rng(0)
            vectors = np.random.default_rng(1).normal(  # another stream: the same actions
                size=(1 + cfg.learner.infonce_negatives, learner.embedder.dim)).tolist() if lam else []
            turns = [dataclasses.replace(t, latent_mean=np.zeros(shape).tolist(),
                                         soft_tokens=rng.normal(size=shape).tolist(),
                                         refined_vectors=vectors)
                     if t.sample == 0 else t for t in grpo_turns]  # sample 0 refined
            before = {k: v.clone() for k, v in heads.state_dict().items()}
            metrics = learner.grpo_step(samples_of(turns, False))
            after = {k: v.clone() for k, v in heads.state_dict().items()}
            moved = any(not torch.equal(before[k], v) for k, v in after.items())
            _, policy_sent, heads_sent = learner.export_weights(policy=False, changed_only=True)
            assert policy_sent == {} and bool(heads_sent) == (sigma > 0)  # a broadcast's heads
            results.append((metrics, moved, after))
        finally:
            learner.close()
    (plain, plain_moved, _), (latent, latent_moved, latent_heads), (nce, _, nce_heads) = results
    assert not plain_moved and "latent_loss" not in plain
    assert latent_moved and latent["latent_rows"] == 2
    assert latent["latent_ratio"] == pytest.approx(1.0)  # on-policy: old mean = new mean
    assert latent["loss"] == pytest.approx(plain["loss"], rel=1e-5, abs=1e-7)
    assert "infonce" not in latent and 0 < nce["infonce"] < 10
    assert nce["latent_loss"] == pytest.approx(latent["latent_loss"], rel=1e-5, abs=1e-7)
    assert any(not torch.equal(latent_heads[k], v) for k, v in nce_heads.items())
