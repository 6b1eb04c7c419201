
import numpy as np
import pytest
import torch

from config.schema import TinyPolicyPretrainConfig, VideoConfig
from corpus.synth import Event, Video, scenes_of
from corpus.video import DecodedVideo, decode_video
from learner.sft_data import moment_sentence
from models.loading import load_processor
from tiny.policy_pretrain import (
    ATTRIBUTE_VALUES,
    PatchProbes,
    caption,
    caption_row,
    compare_row,
    pretrain_policy,
    shown_per_patch,
    word_accuracy,
)


def test_caption_lists_events_in_time_order_in_the_sft_sentence():
    scene = Video("v", "navy", [Event("red", "circle", "left", 5, 9, 0.5),
                                Event("blue", "square", "up", 0, 3, 0.5)])
    assert caption(scene) == (
        "The video shows a blue square moves up on a navy background from 0 to 3 seconds. "
        "The video shows a red circle moves left on a navy background from 5 to 9 seconds.")
    assert caption(scene).startswith(moment_sentence(scene.describe(scene.events[1]), 0, 3))


def test_caption_row_learns_only_the_caption(model_dirs, synth, cfg):
    processor = load_processor(model_dirs[0])
    scene = scenes_of(synth)["synth_0000"]
    v = cfg.video
    frames = decode_video(synth.out_dir / "videos" / "synth_0000.mp4", v)
    row = caption_row(processor, scene, frames)
    learned = [t for t, m in zip(row.ids, row.mask, strict=True) if m]
    assert processor.tokenizer.decode(learned) == caption(scene) + "<|im_end|>"
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert row.ids.count(video_pad) == int(row.video["video_grid_thw"].prod()) // 4
    assert all(m == 0 for t, m in zip(row.ids, row.mask, strict=True) if t == video_pad)


SKIP = frozenset({"a", "moves", "on", "background"})


def test_compare_rows_learn_the_check_and_verdict_after_the_written_captions(model_dirs, synth):
    processor = load_processor(model_dirs[0])
    tok = processor.tokenizer
    scene = scenes_of(synth)["synth_0000"]
    verdicts = []
    for i in range(20):
        row = compare_row(processor, scene, np.random.default_rng(i), SKIP)
        assert row.video is None
        given = tok.decode([t for t, m in zip(row.ids, row.mask, strict=True) if not m])
        learned = tok.decode([t for t, m in zip(row.ids, row.mask, strict=True) if m])
        assert given.endswith("<think>" + caption(scene)) and "Check" not in given
        assert learned.startswith(" Check: ") and learned.endswith("<REFINE><|im_end|>")
        assert learned.count("Check: ") == len(scene.events) and "The video shows" not in learned
        checks = [c.split(".")[0] for c in learned.split("Check: ")[1:]]
        matched = any("differs" not in c for c in checks)  # one moment checks out entirely
        assert matched == ("<answer>matched</answer>" in learned)
        assert matched != ("None of them is the query." in learned)
        verdicts.append(matched)
    assert 0 < sum(verdicts) < 20  # both kinds, about half each


def test_word_accuracy_counts_each_group_of_words_apart(model_dirs, synth):
    processor = load_processor(model_dirs[0])
    rows = [compare_row(processor, scenes_of(synth)["synth_0000"], np.random.default_rng(i), SKIP)
            for i in range(6)]
    same = processor.tokenizer.convert_tokens_to_ids("Ġsame")

    def logits_of(right_on_differs: bool):
        """Ranks the true next token first, or always "same"."""
        def logits(inputs):
            ids = inputs["input_ids"]
            nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
            guess = nxt if right_on_differs else torch.full_like(nxt, same)
            return torch.nn.functional.one_hot(guess, len(processor.tokenizer)).float()
        return logits

    words = {"same": ["same"], "differs": ["differs"]}
    assert word_accuracy(logits_of(True), processor, rows, words, 2, 4) == {"same": 1.0, "differs": 1.0}
    assert word_accuracy(logits_of(False), processor, rows, words, 2, 4) == {"same": 1.0, "differs": 0.0}


def test_shown_per_patch_marks_what_each_pair_of_frames_draws():
    scene = Video("v", "navy", [Event("red", "circle", "left", 1, 3, 0.5),
                                Event("blue", "square", "up", 3, 4, 0.5)])
    frames = DecodedVideo(np.zeros((7, 2, 2, 3), np.uint8), np.arange(7.0), 7.0, 1.0)
    shown = shown_per_patch(scene, frames, temporal_patch=2)
    def drawn(patch):
        return {ATTRIBUTE_VALUES[i] for i in shown[patch].nonzero().flatten().tolist()}

    assert shown.shape == (4, len(ATTRIBUTE_VALUES))  # the odd last frame (t=6) is a patch of its own
    assert drawn(0) == {("colour", "red"), ("shape", "circle"), ("motion", "left")}  # t=0 empty, t=1 red
    assert drawn(1) == {("colour", "red"), ("shape", "circle"), ("motion", "left"),  # t=2 red, t=3 blue
                        ("colour", "blue"), ("shape", "square"), ("motion", "up")}
    assert drawn(2) == drawn(3) == set()  # end_s is exclusive


def test_patch_probes_read_each_temporal_patch_from_its_pooled_tokens():
    torch.manual_seed(0)
    probes = PatchProbes(dim=8)
    grid = torch.tensor([[2, 2, 2], [1, 4, 4]])  # merged tokens per video: 2 and 4
    features = (torch.randn(2, 8), torch.randn(4, 8))
    shown = [torch.tensor([[1.0] * 14, [0.0] * 14]), torch.zeros(1, 14)]
    pooled = torch.stack([features[0][0], features[0][1], features[1].mean(0)])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(probes.linear(pooled), torch.cat(shown))
    assert torch.allclose(probes.loss(features, grid, shown), expected)
    opt = torch.optim.SGD(probes.parameters(), lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        loss = probes.loss(features, grid, shown)
        loss.backward()
        opt.step()
    assert probes.loss(features, grid, shown) < 0.5 * expected


def test_a_short_pretraining_lowers_the_caption_loss(model_dirs, synth, tmp_path):
    import shutil

    policy_dir = tmp_path / "policy"
    shutil.copytree(model_dirs[0], policy_dir)
    report = pretrain_policy(policy_dir, synth, VideoConfig(max_frames=8),
                             TinyPolicyPretrainConfig(steps=15, batch_size=4), 0, progress=False)
    assert report.heldout_videos > 0 and report.last_loss < report.first_loss
    assert report.heldout_loss_after < report.heldout_loss_before
    for word in ("same", "differs", "colour", "shape", "motion"):
        assert 0 <= getattr(report, f"heldout_{word}_accuracy") <= 1


def test_policy_pretraining_needs_steps_and_enough_videos(model_dirs, synth):
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_policy(model_dirs[0], synth, VideoConfig(), TinyPolicyPretrainConfig(steps=0), 0)
    with pytest.raises(ValueError, match="too few"):
        pretrain_policy(model_dirs[0], synth, VideoConfig(), TinyPolicyPretrainConfig(batch_size=500), 0)
