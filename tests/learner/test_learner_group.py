"""The LearnerGroup on a small Ray cluster: DeepSpeed steps on CPU with the real tiny policy,
rank-count and ZeRO-stage invariance, checkpoint -> resume, export, and weight sync into a
vLLM PolicyWorker (greedy output equals the learner model's in transformers)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from models.loading import load_policy
from tests.learner.logprobs import response_logprobs

pytestmark = pytest.mark.slow


def _cfg(cfg, **learner):
    return dataclasses.replace(
        cfg, learner=dataclasses.replace(cfg.learner, **learner),
        resources=dataclasses.replace(cfg.resources, cpus_per_actor=0.5, cpus_per_learner_rank=0.5))


@pytest.fixture(scope="module")
def group(ray_cluster, learner_cfg):
    from actors.learner import LearnerGroup

    g = LearnerGroup(_cfg(learner_cfg), num_ranks=1)
    yield g
    g.shutdown()


def _weights(group) -> tuple[int, dict, dict]:
    import ray

    w = group.export_weights()
    return w.version, ray.get(w.model_ref), ray.get(w.heads_ref)


def _hf_model(model_dirs, state: dict):
    model = load_policy(model_dirs[0])[0].eval()
    model.load_state_dict(state)
    return model


def test_grpo_step_moves_logprobs_along_the_advantages(group, learner_cfg, model_dirs, processor,
                                                       grpo_turns, grpo_samples):
    group.build("grpo", model_dirs[0])
    metrics = group.grpo_step(grpo_samples)
    assert metrics["version"] == 1 and metrics["tokens"] == sum(len(t.response_ids) for t in grpo_turns)
    assert metrics["logprob_mismatch"] < 1e-4, "sampling log-probs came from the same weights"
    assert metrics["ratio"] == pytest.approx(1.0) and metrics["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    before = [lp.mean() for lp in response_logprobs(load_policy(model_dirs[0])[0].eval(), grpo_turns,
                                                    processor, learner_cfg)]
    version, state, _ = _weights(group)
    after = [lp.mean() for lp in response_logprobs(_hf_model(model_dirs, state), grpo_turns,
                                                   processor, learner_cfg)]
    moved = [float(a - b) for a, b in zip(after, before, strict=True)]
    advantages = [2 * t.reward - 1 for t in grpo_turns]  # rewards 0/1 in each group of 2
    assert version == 1
    assert all(m * a > 0 for m, a in zip(moved, advantages, strict=True)), moved


def test_two_ranks_under_zero2_and_zero3_update_like_one_rank(ray_cluster, group, learner_cfg,
                                                              model_dirs, grpo_samples,
                                                              sft_examples, tmp_path):
    """Same batch, same global batch size (1 rank x 2 accumulation steps = 2 ranks x 1), two
    steps (the second with Adam state and a KL term): the same losses and the same update. Adam
    divides by sqrt(v), so a gradient that is ~0 up to roundoff can move a weight by up to lr
    either way: a few elements may differ by a small fraction of lr, the update as a whole
    agrees to 1e-4."""
    from actors.learner import LearnerGroup

    group.build("grpo", model_dirs[0])
    losses = [group.grpo_step(grpo_samples)["loss"] for _ in range(2)]
    _, want, _ = _weights(group)
    initial = load_policy(model_dirs[0])[0].state_dict()
    two = LearnerGroup(_cfg(learner_cfg), num_ranks=2)
    try:
        for stage in (2, 3):
            cfg = _cfg(learner_cfg, zero_stage=stage, grad_accum_steps=1)
            two.build("grpo", model_dirs[0], cfg=cfg,
                      ds_overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
            got_losses = [two.grpo_step(grpo_samples)["loss"] for _ in range(2)]
            _, got, _ = _weights(two)
            assert got_losses == pytest.approx(losses, rel=1e-5), stage
            assert got.keys() == want.keys()
            diff = sum(((got[n] - want[n]) ** 2).sum() for n in want).sqrt()
            update = sum(((want[n] - initial[n]) ** 2).sum() for n in want).sqrt()
            worst = max((got[n] - want[n]).abs().max().item() for n in want)
            assert update > 1e-2, "the steps moved the weights"
            assert diff / update < 1e-4 and worst < 0.05 * learner_cfg.learner.lr, (stage, diff, worst)
        exported = load_policy(two.export_hf(tmp_path / "zero3_export"))[0].state_dict()
        assert all(torch.equal(exported[n], got[n]) for n in got), "ZeRO-3 export = gathered weights"

        from models.sqr_heads import SQRHeads

        # the heads fit: rank 0 fits, and the fitted heads reach both ranks' partitions (the
        # gather then equals what one rank fits on the same turns)
        fit = dataclasses.replace(cfg, sqr=dataclasses.replace(cfg.sqr, fit_steps=20))
        two.build("sft", model_dirs[0], model_dirs[1], cfg=fit, ds_overrides={
            "zero_optimization": {"stage3_param_persistence_threshold": 0}})
        report = two.fit_heads(sft_examples, [])
        group.build("sft", model_dirs[0], model_dirs[1], cfg=dataclasses.replace(
            _cfg(learner_cfg), sqr=fit.sqr))
        assert group.fit_heads(sft_examples, [])["train_error"] == pytest.approx(
            report["train_error"], rel=1e-4)
        assert report["train_error"][1] < report["train_error"][0] == pytest.approx(1.0)
        (_, _, fitted_two), (_, _, fitted_one) = _weights(two), _weights(group)
        initial = SQRHeads.load(model_dirs[0]).state_dict()
        for name, value in fitted_one.items():
            torch.testing.assert_close(fitted_two[name], value, atol=1e-4, rtol=1e-3)
            assert not torch.equal(value, initial[name]), name
    finally:
        two.shutdown()


def test_checkpoint_resume_gives_the_same_next_step(group, model_dirs, grpo_samples, tmp_path):
    from learner.checkpoint import CheckpointError

    first, second = grpo_samples[:2] + grpo_samples[2:], grpo_samples[2:] + grpo_samples[:2]
    group.build("grpo", model_dirs[0])
    group.grpo_step(first)
    tag = group.save(tmp_path / "ckpt", {"step": 1, "data_position": 4})
    want = group.grpo_step(second)
    _, want_state, _ = _weights(group)

    group.build("grpo", model_dirs[0])  # a fresh learner, as after a restart
    assert group.load(tmp_path / "ckpt") == {"step": 1, "data_position": 4}
    got = group.grpo_step(second)
    _, got_state, _ = _weights(group)
    assert got["version"] == want["version"] == 2
    assert got["loss"] == want["loss"] and got["kl_ref"] == want["kl_ref"]
    for name in want_state:
        assert torch.equal(got_state[name], want_state[name]), name

    with pytest.raises(CheckpointError, match="nowhere"):
        group.load(tmp_path / "nowhere")
    states = sorted(p for p in (tmp_path / "ckpt").rglob("*optim_states.pt"))
    states[0].write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(tag)):
        group.load(tmp_path / "ckpt")


def test_exported_checkpoint_loads_in_transformers_with_the_learners_weights(
        group, model_dirs, sft_examples, tmp_path):
    from models.sqr_heads import SQRHeads

    group.build("sft", model_dirs[0], model_dirs[1])
    # three steps: the first update only moves the zero-initialised append projector off zero;
    # with the 4-layer embedder the InfoNCE after it was still above the first (1.43 -> 1.46 -> 0.62)
    metrics = [group.sft_step(sft_examples) for _ in range(3)]
    assert metrics[-1]["infonce"] < metrics[0]["infonce"] and metrics[-1]["ce"] < metrics[0]["ce"]
    out = group.export_hf(tmp_path / "export")
    version, state, heads = _weights(group)
    model, loaded_heads = load_policy(out)
    with safe_open(f"{out}/model.safetensors", "pt") as f:
        assert set(f.keys()) == set(state), "exported names are save_pretrained's names"
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    initial = SQRHeads.load(model_dirs[0])
    for name, value in loaded_heads.state_dict().items():
        assert torch.equal(value, heads[name]), name
        assert not torch.equal(value, initial.state_dict()[name]), "SFT trains the heads"
    assert version == len(metrics)


def test_weight_sync_makes_vllm_greedy_equal_the_learner(group, learner_cfg, model_dirs,
                                                         processor, grpo_turns, grpo_samples):
    """After a GRPO step and a sync of what it changed only, the PolicyWorker's greedy turn
    (video input) equals the learner model's greedy turn in transformers, and differs from the
    initial model's."""
    import ray

    from actors.policy_worker import PolicyWorker
    from corpus.video import decode_video
    from models.prompts import hf_turn_inputs

    cfg = _cfg(learner_cfg, lr=1e-2)
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(
        cfg.rollout, max_model_len=1024,
        sampling=dataclasses.replace(cfg.rollout.sampling, max_tokens=12)))
    turn = grpo_turns[0]
    worker = PolicyWorker.options(num_cpus=0.5).remote(cfg, str(model_dirs[0]), "w0")
    try:
        ray.get(worker.ready.remote())
        group.build("grpo", model_dirs[0], cfg=cfg)
        group.grpo_step(grpo_samples)
        w, full = group.export_weights(changed_only=True), group.export_weights()
        sent, state = ray.get(w.model_ref), ray.get(full.model_ref)
        assert w.heads_ref is None and not w.full  # GRPO without the latent policy: heads frozen
        assert not any(".visual." in n for n in sent) and any(".visual." in n for n in state)
        assert set(sent) < set(state)
        ray.get(worker.load_weights.remote(w.version, w.model_ref, w.heads_ref))
        got = ray.get(worker.generate.remote(turn.query_text, turn.video_path, None, True))
        assert got.weight_version == w.version == 1
        assert ray.get(worker.weight_version.remote()) == 1
    finally:
        ray.kill(worker)

    v = cfg.video
    video = decode_video(turn.video_path, v)
    inputs = hf_turn_inputs(processor, turn.query_text, video)
    stop = [processor.tokenizer.convert_tokens_to_ids("<REFINE>"), processor.tokenizer.eos_token_id]

    def greedy(model) -> list[int]:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=stop)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    assert got.prompt_ids == inputs["input_ids"][0].tolist()
    assert got.response_ids == greedy(_hf_model(model_dirs, state))
    assert got.response_ids != greedy(load_policy(model_dirs[0])[0].eval()), "the update mattered"


def test_sft_learning_rate_warms_up_then_decays_to_its_floor(group, learner_cfg, model_dirs,
                                                             sft_examples):
    from learner.engine import sft_schedule

    lcfg = learner_cfg.learner
    steps = 8
    group.build("sft", model_dirs[0], model_dirs[1], ds_overrides=sft_schedule(steps, lcfg))
    lrs = [group.sft_step(sft_examples[:4])["lr"] for _ in range(steps)]
    peak = lrs.index(max(lrs))
    assert 0 < peak < steps - 1 and 0.8 * lcfg.lr < max(lrs) <= lcfg.lr
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1])  # warm-up
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)  # cosine decay
    assert lrs[-1] < 2 * lcfg.sft_min_lr_ratio * lcfg.lr


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=pytest.mark.gpu)])
def test_broadcast_makes_vllm_greedy_equal_the_object_store_path(
        group, learner_cfg, model_dirs, processor, grpo_turns, grpo_samples, backend):
    """The broadcast transport's whole path (vLLM's weight-transfer API; gloo is the nccl
    protocol on CPU): after a GRPO step and a changed-only round, the engine reports the
    round's version and its greedy turn equals the object-store path's; a worker that joins a
    re-formed group takes a full round."""
    import ray

    from actors.policy_worker import PolicyWorker

    cfg = _cfg(learner_cfg, lr=1e-2)
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(
        cfg.rollout, max_model_len=1024, weight_transport=backend,
        sampling=dataclasses.replace(cfg.rollout.sampling, max_tokens=12)))
    turn = grpo_turns[0]
    workers = [PolicyWorker.options(num_cpus=0.5).remote(cfg, str(model_dirs[0]), f"g{i}")
               for i in range(2)]
    try:
        ray.get([w.ready.remote() for w in workers])
        group.build("grpo", model_dirs[0], cfg=cfg)
        group.connect_workers(workers[:1], backend)
        assert ray.get([w.transfer_joined.remote() for w in workers]) == [True, False]
        group.grpo_step(grpo_samples)
        w = group.push_weights(7, changed_only=True)
        assert w.model_ref is None and w.heads_ref is None and not w.full
        assert ray.get(workers[0].weight_version.remote()) == 7
        got = ray.get(workers[0].generate.remote(turn.query_text, turn.video_path, None, True))
        assert got.weight_version == 7

        # the same weights through the object store into the second worker
        full = group.export_weights()
        ray.get(workers[1].load_weights.remote(1, full.model_ref, full.heads_ref))
        want = ray.get(workers[1].generate.remote(turn.query_text, turn.video_path, None, True))
        assert got.response_ids == want.response_ids

        # re-formed with both: a full round, heads included, reaches the newcomer too
        group.connect_workers(workers, backend)
        w = group.push_weights(8, changed_only=False)
        assert w.heads_ref is not None and w.full
        assert ray.get([x.weight_version.remote() for x in workers]) == [8, 8]
        again = ray.get([x.generate.remote(turn.query_text, turn.video_path, None, True)
                         for x in workers])
        assert [a.response_ids for a in again] == [want.response_ids] * 2
    finally:
        for x in workers:
            ray.kill(x)
