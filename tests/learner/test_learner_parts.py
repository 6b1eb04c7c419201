"""The learner's pieces without Ray or DeepSpeed: the micro-batch plan, the DeepSpeed config,
batch building from turns, advantages per episode, SFT examples, checkpoint errors, and the SFT
loss's gradient path (InfoNCE through the frozen embedder into the SQR heads)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from config.schema import LearnerConfig
from learner.batch import VideoInputs, collate
from learner.checkpoint import CheckpointError, resolve
from learner.engine import ds_config
from learner.grpo import GRPOLoss, grpo_rows
from learner.schedule import plan
from models.prompts import mm_token_type_ids
from rollout.group import Group, groups_of, samples_of


@pytest.mark.parametrize("by_length,grouped", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("world,accum", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_plan_covers_every_row_once_and_keeps_ranks_in_step(rows, world, accum, by_length, grouped):
    lengths = [(7 * i) % 11 + 1 for i in range(rows)] if by_length else None
    groups = [i % 2 for i in range(rows)] if grouped else None
    plans = [plan(rows, r, world, micro_batch=2, accum=accum, lengths=lengths, groups=groups)
             for r in range(world)]
    assert len({len(p) for p in plans}) == 1, "every rank makes the same number of steps"
    seen = []
    for m in range(len(plans[0])):
        assert {tuple(p[m].rows) for p in plans} == {tuple(plans[0][m].rows)}
        for p in plans:
            assert len(p[m].micro) == accum and all(len(c) <= 2 for c in p[m].micro)
        got = sorted(i for p in plans for c in p[m].micro for i in c)
        assert got == plans[0][m].rows
        seen += got
    assert seen == list(range(rows))
    with pytest.raises(ValueError):
        plan(0, 0, world, 2, accum)


def test_plan_groups_rows_of_similar_length_into_micro_batches():
    """Same mini-batches as in row order, but each micro-batch holds neighbours in length, so
    the padded tokens (rows x longest row, summed over micro-batches) shrink."""
    lengths = [100, 10, 90, 20, 80, 30, 70, 40]

    def padded(p):
        return sum(len(c) * max(lengths[i] for i in c) for mb in p for c in mb.micro if c)

    plain = plan(8, 0, 1, micro_batch=2, accum=4)
    dealt = plan(8, 0, 1, micro_batch=2, accum=4, lengths=lengths)
    assert [mb.rows for mb in dealt] == [mb.rows for mb in plain]
    assert [sorted(lengths[i] for i in c) for c in dealt[0].micro] == [
        [90, 100], [70, 80], [30, 40], [10, 20]]
    assert padded(dealt) == 2 * (100 + 80 + 40 + 20) < padded(plain)
    with pytest.raises(ValueError, match="lengths"):
        plan(8, 0, 1, 2, 4, lengths=[1, 2])


def test_plan_keeps_rows_of_one_prompt_in_one_micro_batch():
    """Rows sharing a prompt forward it once only if they share a micro-batch (two groups of
    four here, interleaved as the turns of two queries' episodes come)."""
    lengths = [100, 10, 90, 20, 80, 30, 70, 40]
    groups = [0, 1, 0, 1, 0, 1, 0, 1]
    for world in (1, 2):
        micro = [c for r in range(world) for mb in plan(8, r, world, 4, 2 // world, lengths, groups)
                 for c in mb.micro]
        assert sorted(sorted(c) for c in micro) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with pytest.raises(ValueError, match="groups"):
        plan(8, 0, 1, 2, 4, groups=[0])


def test_ds_config_follows_the_learner_config():
    cfg = ds_config(LearnerConfig(zero_stage=3, micro_batch_size=2, grad_accum_steps=3), world=2,
                    overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    assert cfg["train_batch_size"] == 12 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert cfg["bf16"]["enabled"] is torch.cuda.is_available()
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(ValueError, match="zero_stage"):
        ds_config(LearnerConfig(zero_stage=4), world=1)


def test_collate_pads_right_and_aligns_labels_and_sampler_logprobs(cfg, processor, grpo_turns):
    rows = grpo_rows(samples_of(grpo_turns, True), VideoInputs(processor, cfg.video))
    batch = collate(rows, processor, merge=2, device="cpu")
    ids, inputs = batch.inputs["input_ids"], batch.inputs
    for i, t in enumerate(grpo_turns):
        # the prompt but its last token is the row's prefix; the suffix runs from there
        prefix = inputs["prefix_ids"][inputs["group"][i]]
        assert prefix[:len(t.prompt_ids) - 1].tolist() == t.prompt_ids[:-1]
        seq = t.prompt_ids[-1:] + t.response_ids
        assert ids[i, :len(seq)].tolist() == seq
        assert (ids[i, len(seq):] == processor.tokenizer.pad_token_id).all()
        assert batch.inputs["attention_mask"][i].sum() == len(seq)
        learned = batch.mask[i].nonzero().flatten()
        assert learned.tolist() == list(range(len(t.response_ids)))
        assert batch.labels[i, learned].tolist() == t.response_ids
        assert batch.sampled[i, learned].tolist() == pytest.approx(t.sampling_logprobs)
    assert batch.advantages.tolist() == pytest.approx([-1, 1, -1, 1], abs=1e-5)
    assert batch.labels.shape[1] == ids.shape[1] - 1


def test_rows_refuse_mismatched_video(cfg, processor, grpo_turns):
    videos = VideoInputs(processor, cfg.video)
    short = dataclasses.replace(grpo_turns[0], frame_times=grpo_turns[0].frame_times[:-1])
    with pytest.raises(ValueError, match="frame times"):
        grpo_rows(samples_of([short], True), videos)
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    ids = list(grpo_turns[0].prompt_ids)
    ids.remove(video_pad)
    with pytest.raises(ValueError, match="video tokens"):
        collate(grpo_rows(samples_of([dataclasses.replace(grpo_turns[0], prompt_ids=ids)], True), videos),
                processor, 2, "cpu")


def test_every_turn_gets_its_episodes_group_advantage(grpo_turns):
    first = dataclasses.replace(grpo_turns[1], episode_reward=2.0, is_final=False)
    second = dataclasses.replace(grpo_turns[1], turn=2, episode_reward=2.0)
    turns = [grpo_turns[0], first, *grpo_turns[2:], second]
    groups = groups_of(turns, std_normalize=False)
    assert [[len(e) for e in g.episodes] for g in groups] == [[1, 2], [1, 1]]
    assert [s.advantage for s in samples_of(turns, False)] == pytest.approx([-1, 1, 1, -0.5, 0.5])
    assert [s.advantage for s in samples_of(grpo_turns, True)] == pytest.approx([-1, 1, -1, 1],
                                                                                abs=1e-5)
    assert [g.informative for g in groups] == [True, True]
    assert not Group.of([[grpo_turns[0]], [grpo_turns[0]]], True).informative


def test_a_sample_refuses_logprobs_that_do_not_match_its_response(grpo_turns):
    bad = dataclasses.replace(grpo_turns[0], sampling_logprobs=grpo_turns[0].sampling_logprobs[1:])
    with pytest.raises(ValueError, match="log-probs"):
        samples_of([bad], True)


def test_every_turn_of_an_episode_counts_in_full(grpo_turns, processor, cfg):
    """The episode's log-prob is the sum over its turns: no turn is down-weighted."""
    first = dataclasses.replace(grpo_turns[1], is_final=False)
    second = dataclasses.replace(grpo_turns[1], turn=2)
    turns = [grpo_turns[0], first, second, *grpo_turns[2:]]
    rows = grpo_rows(samples_of(turns, False), VideoInputs(processor, cfg.video))
    assert [r.weight for r in rows] == [1.0] * 5
    assert rows[1].advantage == rows[2].advantage != 0


def test_grpo_logprobs_are_those_of_the_tempered_sampling_distribution(cfg, processor, grpo_turns):
    """vLLM reports log-probs after temperature; the learner's must be of the same distribution."""
    batch = collate(grpo_rows(samples_of(grpo_turns, False), VideoInputs(processor, cfg.video)),
                    processor, merge=2, device="cpu")
    b, t = batch.labels.shape
    logits = torch.randn(b, t + 1, 11)

    def model(**_):
        return logits, None, None

    labels = batch.labels.clamp(min=0) % 11
    batch = dataclasses.replace(batch, labels=labels)
    for temp in (1.0, 0.7):
        want = torch.log_softmax(logits[:, :-1] / temp, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        got, latent = GRPOLoss(LearnerConfig(), None, temperature=temp).logprobs(model, batch)
        assert torch.allclose(got, want) and latent is None
    with pytest.raises(ValueError, match="temperature > 0"):
        GRPOLoss(LearnerConfig(), None, temperature=0.0)


def test_samples_of_an_older_policy_get_the_decoupled_correction(cfg, processor, grpo_turns):
    """Rows sampled before `policy_version` are stale: their tokens are weighted by
    min(pi_old / pi_behaviour, cap); with every sample current the loss is the plain one."""
    from learner.stats import Stats

    samples = samples_of(grpo_turns, False)
    samples[0].weight_version = 1  # the others were sampled by version 2
    for s in samples[1:]:
        s.weight_version = 2
    videos = VideoInputs(processor, cfg.video)
    assert [r.stale for r in grpo_rows(samples, videos, None, policy_version=2)] == \
        [True, False, False, False]
    assert not any(r.stale for r in grpo_rows(samples, videos, None, policy_version=None))
    b = collate(grpo_rows(samples, videos), processor, merge=2, device="cpu")
    logits = torch.randn(*b.labels.shape[:1], b.labels.shape[1] + 1, 11)
    labels = b.labels.clamp(min=0) % 11

    def loss_of(version):
        batch = collate(grpo_rows(samples, videos, None, version), processor, 2, "cpu")
        batch = dataclasses.replace(batch, labels=labels, sampled=batch.sampled - 0.5 * batch.mask)
        stats = Stats()
        loss = GRPOLoss(LearnerConfig(kl_beta=0.0, behaviour_weight_cap=1.5), None)(
            lambda **_: (logits, None, None), batch, (0, 0), (float(batch.mask.sum()), 0.0), stats)
        return loss, stats.sums

    plain, plain_stats = loss_of(None)
    fresh, _ = loss_of(1)  # no sample is older than version 1
    stale, stale_stats = loss_of(2)
    assert torch.equal(plain, fresh) and not torch.equal(plain, stale)
    assert plain_stats["stale_tokens"] == 0
    assert stale_stats["stale_tokens"] == len(samples[0].response_ids)


def test_grpo_adds_lambda_infonce_of_the_refined_turns_under_the_latent_policy(cfg, processor,
                                                                             grpo_turns):
    """Only rows that carry the index's vectors are encoded; the term is lambda x their mean
    InfoNCE (a share of the mini-batch's refined rows), logged as `infonce`; sigma = 0 or
    lambda = 0 leave GRPO's loss as it was."""
    from config.schema import SQRConfig
    from learner.losses import info_nce
    from learner.stats import Stats

    n, d, d_emb, k = 2, 3, 4, 2
    rng = np.random.default_rng(0)
    samples = samples_of(grpo_turns, False)
    vectors = rng.normal(size=(1 + k, d_emb)).astype(np.float32)
    samples[1] = dataclasses.replace(samples[1], latent_action=rng.normal(size=(n, d)).tolist(),
                                     query_text="a red circle", refined_vectors=vectors.tolist())
    batch = collate(grpo_rows(samples, VideoInputs(processor, cfg.video), (7, n)), processor, 2, "cpu")
    torch.manual_seed(0)  # the same tensors whatever ran before in this process
    logits = torch.randn(*batch.labels.shape[:1], batch.labels.shape[1] + 1, 11)
    soft = torch.randn(len(samples), n, d_emb)
    mean = torch.randn(len(samples), n, d)
    batch = dataclasses.replace(batch, labels=batch.labels.clamp(min=0) % 11)
    encoded = []

    def encode(texts, s):
        encoded.append(list(texts))
        return s.sum(1) * 2.0

    def loss_of(sqr, enc):
        stats = Stats()
        loss = GRPOLoss(LearnerConfig(kl_beta=0.0), None, sqr=sqr, encode=enc)(
            lambda **_: (logits, soft, mean), batch, (0, 0), (float(batch.mask.sum()), 1.0), stats)
        return loss, stats.reduce()

    latent = SQRConfig(latent_sigma=0.05, latent_infonce_lambda=0.5)
    plain, _ = loss_of(dataclasses.replace(latent, latent_infonce_lambda=0.0), encode)
    with_nce, stats = loss_of(latent, encode)
    assert encoded == [["a red circle"]]
    want = info_nce(soft[1:2].sum(1) * 2.0, torch.from_numpy(vectors[:1]), torch.from_numpy(vectors[None, 1:]))
    assert stats["infonce"] == pytest.approx(want.item(), rel=1e-6)
    # a difference of two float32 losses: its error scales with the losses, not with it
    assert (with_nce - plain).item() == pytest.approx(0.5 * want.item(), abs=1e-6 * max(1.0, abs(plain.item())))
    no_latent, no_latent_stats = loss_of(SQRConfig(latent_sigma=0.0), encode)
    assert "infonce" not in no_latent_stats and len(encoded) == 1
    # a micro-batch without a refined row still reaches the soft tokens (a zero gradient on
    # every rank, as ZeRO reduces every trained parameter)
    batch = dataclasses.replace(batch, rows=[dataclasses.replace(r, positive=None) for r in batch.rows])
    soft.requires_grad_(True)
    empty, empty_stats = loss_of(latent, encode)
    empty.backward()
    assert empty.item() == pytest.approx(plain.item()) and empty_stats["infonce"] == 0.0
    assert soft.grad is not None and not soft.grad.any() and len(encoded) == 1


def test_a_large_logprob_mismatch_is_a_warning(caplog):
    from learner.grpo import warn_mismatch

    with caplog.at_level("WARNING", logger="learner.grpo"):
        warn_mismatch({"logprob_mismatch": 0.01}, threshold=0.05)
        assert not caplog.records
        warn_mismatch({"logprob_mismatch": 0.2}, threshold=0.05)
    assert "mismatch 0.2000 > 0.0500" in caplog.text


def test_missing_or_incomplete_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nowhere")):
        resolve(tmp_path / "nowhere")
    (tmp_path / "latest").write_text("step_00000003")
    with pytest.raises(CheckpointError, match="step_00000003"):
        resolve(tmp_path)


def test_sft_gradient_reaches_the_refine_projector_only_through_infonce(
        learner_cfg, model_dirs, processor, sft_examples):
    from learner.batch import collate as collate_rows
    from learner.module import PolicyWithHeads, set_trainable
    from learner.sft import SFTLoss, normalisers, sft_rows
    from learner.stats import Stats
    from models.loading import load_policy
    from models.tokens import SQR_SLOT_TOKEN
    from retrieval_service.embedder import Embedder

    cfg = learner_cfg
    module = PolicyWithHeads(*load_policy(model_dirs[0]))
    set_trainable(module, heads=True, vision=False)
    embedder = Embedder(model_dirs[1], None, video=cfg.video)
    slot = processor.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN)
    kinds = {e.answer: e for e in sft_examples}
    examples = [kinds["matched"], kinds["not_matched"]]  # unequal lengths: padding in between
    rows = sft_rows(examples, processor, VideoInputs(processor, cfg.video), slot, cfg.sqr.num_tokens)
    batch = collate_rows(rows, processor, 2, "cpu")

    # the soft tokens are the heads applied to the final hidden states at the slots, as a
    # whole-row forward of each row alone computes them
    with torch.no_grad():
        _, soft, _ = module(**batch.inputs)
        for i, r in enumerate(rows):
            hidden = module.policy(input_ids=torch.tensor([r.ids]), **r.video,
                                   mm_token_type_ids=mm_token_type_ids(processor, r.ids),
                                   output_hidden_states=True).hidden_states[-1][0]
            at = hidden[len(r.ids) - cfg.sqr.num_tokens:]
            torch.testing.assert_close(soft[i], module.heads.to_embedder(module.heads.soft_tokens(at)),
                                       atol=1e-5, rtol=1e-4)

    # The append projector starts at zero (a refinement starts as the plain query), which
    # blocks the gradient to everything before it until its first update: take that update.
    with torch.no_grad():
        module.heads.append_projector[-1].weight.normal_(std=0.02)

    def head_grads(rows_):
        module.zero_grad()
        b = collate_rows(rows_, processor, 2, "cpu")
        SFTLoss(cfg.learner, embedder)(module, b, (0, 0), normalisers(rows_), Stats()).backward()
        return {n: p.grad for n, p in module.heads.named_parameters()}

    grads = head_grads(rows)
    assert all(g is not None and g.abs().sum() > 0 and g.isfinite().all() for g in grads.values())
    assert not any(p.grad is not None for p in embedder.model.parameters())
    assert module.policy.model.visual.patch_embed.proj.weight.grad is None
    matched_only = [r for r in rows if r.nce_weight == 0]
    assert all(g is None or not g.any() for g in head_grads(matched_only).values())


def test_slot_words_train_the_logits_at_the_slots_to_name_what_the_video_lacks(
        learner_cfg, model_dirs, processor, sft_examples):
    import dataclasses

    import torch.nn.functional as F

    from learner.batch import collate as collate_rows
    from learner.losses import IGNORE
    from learner.module import PolicyWithHeads
    from learner.sft import SFTLoss, normalisers, sft_rows
    from learner.stats import Stats
    from models.loading import load_policy
    from models.tokens import SQR_SLOT_TOKEN
    from retrieval_service.embedder import Embedder

    cfg, n = learner_cfg, learner_cfg.sqr.num_tokens
    module = PolicyWithHeads(*load_policy(model_dirs[0]))
    embedder = Embedder(model_dirs[1], None, video=cfg.video)
    slot = processor.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN)
    kinds = {e.answer: e for e in sft_examples}
    lacking = dataclasses.replace(kinds["not_matched"], refine_words=("red", "left"))
    rows = sft_rows([kinds["matched"], lacking], processor, VideoInputs(processor, cfg.video), slot, n)
    words = [processor.tokenizer(" " + w, add_special_tokens=False).input_ids for w in ("red", "left")]
    assert rows[0].slot_words is None and rows[1].slot_words == [t for w in words for t in w]
    batch = collate_rows(rows, processor, 2, "cpu")
    labels = batch.slot_labels(n, "cpu")
    assert (labels[0] == IGNORE).all() and labels[1, :2].tolist() == rows[1].slot_words
    assert (labels[1, 2:] == IGNORE).all()

    # the term is the CE of a whole-row forward's logits at the row's last N positions
    with torch.no_grad():
        r = rows[1]
        logits = module.policy(input_ids=torch.tensor([r.ids]), **r.video,
                               mm_token_type_ids=mm_token_type_ids(processor, r.ids)).logits[0]
        want = F.cross_entropy(logits[len(r.ids) - n:][:2].float(), labels[1, :2])
        norms = normalisers(rows)
        assert norms[2] == 2.0
        stats, plain = Stats(), SFTLoss(cfg.learner, embedder)(module, batch, (0, 0), norms, Stats())
        weighted = SFTLoss(cfg.learner, embedder, 0.5)(module, batch, (0, 0), norms, stats)
    assert stats.reduce()["slot_words"] == pytest.approx(want.item(), rel=1e-4)
    assert (weighted - plain).item() == pytest.approx(0.5 * want.item(), rel=1e-4)


def test_prune_keeps_the_newest_checkpoints_and_the_latest(tmp_path):
    from learner.checkpoint import prune

    for step in (3, 10, 7, 12):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / "step_notes").mkdir()  # not a tag: never touched
    (tmp_path / "latest").write_text("step_00000003")  # e.g. a run that saved, then resumed
    removed = prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step_00000007"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "step_00000003", "step_00000010", "step_00000012", "step_notes"]
    (tmp_path / "latest").write_text("step_00000012")
    assert [p.name for p in prune(tmp_path, keep=1)] == ["step_00000003", "step_00000010"]


@pytest.mark.parametrize("field,value", [("sft_warmup_fraction", 1.0), ("sft_min_lr_ratio", -0.1)])
def test_sft_schedule_rejects_nonsense(learner_cfg, field, value):
    from learner.engine import sft_schedule

    with pytest.raises(ValueError, match="SFT schedule"):
        sft_schedule(10, dataclasses.replace(learner_cfg.learner, **{field: value}))
    with pytest.raises(ValueError, match="SFT schedule"):
        sft_schedule(0, learner_cfg.learner)


def test_the_heads_train_in_a_param_group_of_their_own():
    from torch import nn

    from learner.engine import param_groups

    module = nn.Module()
    module.policy, module.heads = nn.Linear(2, 2), nn.Linear(2, 3)
    module.policy.bias.requires_grad_(False)
    groups = param_groups(module, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert [len(g["params"]) for g in param_groups(module, 1e-3, 1.0)] == [3]  # the default
    module.heads.requires_grad_(False)  # GRPO: frozen heads, one group
    assert [len(g["params"]) for g in param_groups(module, 1e-3, 0.1)] == [1]
