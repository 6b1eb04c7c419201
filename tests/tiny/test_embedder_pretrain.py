import pytest
import torch

from config.schema import TinyEmbedderPretrainConfig, VideoConfig
from corpus.synth import Event, Video
from tiny.embedder_pretrain import AttributeProbes, pretrain_embedder, symmetric_info_nce


def test_symmetric_info_nce_rewards_aligned_pairs():
    v = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    aligned = symmetric_info_nce(v, v, tau=0.5)
    shuffled = symmetric_info_nce(v, v.roll(1, dims=0), tau=0.5)
    logits = v @ v.T / 0.5
    by_hand = -(logits.diag() - logits.logsumexp(dim=1)).mean() / 2 \
        - (logits.diag() - logits.logsumexp(dim=0)).mean() / 2
    assert aligned.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert aligned < shuffled


def test_a_short_pretraining_lowers_the_loss_and_saves_the_embedder(synth, model_dirs, tmp_path):
    import shutil

    embedder_dir = tmp_path / "embedder"
    shutil.copytree(model_dirs[1], embedder_dir)
    pcfg = TinyEmbedderPretrainConfig(steps=40, batch_size=8, backgrounds_per_batch=2, warmup_steps=5)
    report = pretrain_embedder(embedder_dir, synth, VideoConfig(max_frames=8), pcfg, 0, progress=False)
    assert report.steps == 40 and report.heldout_queries > 0
    assert report.last_loss < report.first_loss
    assert (embedder_dir / "model.safetensors").stat().st_mtime > (model_dirs[1] / "model.safetensors").stat().st_mtime


def test_pretraining_needs_steps(synth, model_dirs):
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_embedder(model_dirs[1], synth, VideoConfig(), TinyEmbedderPretrainConfig(steps=0), 0)


def test_pretraining_rejects_a_corpus_too_small_for_its_batches(synth, model_dirs):
    pcfg = TinyEmbedderPretrainConfig(steps=1, batch_size=64, backgrounds_per_batch=8)
    with pytest.raises(ValueError, match="too few"):
        pretrain_embedder(model_dirs[1], synth, VideoConfig(), pcfg, 0)


def test_attribute_probes_learn_the_scene_from_separable_vectors():
    """The probes read colours shown, background, each colour's shape and motion, and the
    query's colour/shape."""
    torch.manual_seed(0)
    scenes = [Video("a", "navy", [Event("red", "circle", "left", 0, 2, 0.5),
                                  Event("blue", "square", "up", 3, 5, 0.5)]),
              Video("b", "black", [Event("green", "triangle", "down", 0, 2, 0.5)])]
    events = [scenes[0].events[1], scenes[1].events[0]]
    videos, queries = torch.eye(2, 8) * 3, torch.eye(2, 8).flip(0) * 3
    probes = AttributeProbes(8)
    opt = torch.optim.Adam(probes.parameters(), lr=0.1)
    first = probes.loss(videos, queries, scenes, events).item()
    for _ in range(100):
        opt.zero_grad()
        loss = probes.loss(videos, queries, scenes, events)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
