import json
import threading

import pytest
import torch

from config.schema import (
    TinyEmbedderPretrainConfig,
    TinyPolicyPretrainConfig,
    TinyPretrainConfig,
    VideoConfig,
)
from corpus.synth import BACKGROUNDS, COLOURS, MOTIONS, SHAPES
from learner.sft_data import reasoning
from models.loading import ModelNotFoundError, load_embedder, load_policy, load_processor
from models.prompts import CAPTION_PROMPT, INSTRUCTION
from models.sqr_heads import SQRHeads, SQRHeadsConfig
from models.tokens import QWEN_SPECIAL_TOKENS, REFINE_TOKEN, SQR_SLOT_TOKEN
from tiny.build import MANIFEST, build_tiny_models, embedder_from_policy


def test_tiny_policy_is_the_real_architecture(model_dirs):
    policy_dir, embedder_dir = model_dirs
    cfg = json.loads((policy_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert cfg["tie_word_embeddings"] is False and cfg["text_config"]["head_dim"] == 64
    model, heads = load_policy(policy_dir)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert heads.cfg.num_tokens == 8
    assert heads.cfg.policy_hidden == model.config.text_config.hidden_size
    embedder = load_embedder(embedder_dir)
    assert type(embedder).__name__ == "Qwen3VLModel"
    assert heads.cfg.embedder_hidden == embedder.config.text_config.hidden_size


def test_tokenizer_keeps_qwen_special_tokens_and_adds_sqr_tokens(model_dirs):
    tok = load_processor(model_dirs[0]).tokenizer
    for t in QWEN_SPECIAL_TOKENS + ["<think>", "</think>", REFINE_TOKEN, SQR_SLOT_TOKEN]:
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1, t
    text = "<think>ok</think> <answer>matched</answer> <start>1.5</start> <end>4</end> <REFINE>"
    ids = tok(text).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # parser-visible tags survive


def test_every_word_the_corpus_and_prompts_use_is_one_token(model_dirs):
    tok = load_processor(model_dirs[0]).tokenizer
    words = [*" ".join(BACKGROUNDS).split(), *COLOURS, *SHAPES, *MOTIONS,
             *INSTRUCTION.replace("{query}", "").split(), *CAPTION_PROMPT.split()]
    words = [w for w in words if w.isalpha()]
    pieces = {w: min(tok.tokenize(w), tok.tokenize(" " + w), key=len) for w in words}  # first word: no space
    assert {w: p for w, p in pieces.items() if len(p) != 1} == {}
    query = "a red circle moves left on a dark green background"
    traces = [reasoning(query, [(query, 2, 6)], "matched", frozenset({"a"}), 2, 6),
              reasoning(query, [(query.replace("red", "blue"), 2, 6)], "not_matched", frozenset())]
    assert "Check: red red same" in traces[0] and "red blue differs" in traces[1]
    words = {w.strip(".,:") for t in traces for w in t.split()}
    assert {w: tok.tokenize(" " + w) for w in words if w.isalpha() and len(tok.tokenize(" " + w)) != 1} == {}


def test_chat_template_places_video_and_text(model_dirs):
    proc = load_processor(model_dirs[0])
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>q<|im_end|>\n"
                    "<|im_start|>assistant\n")


NO_PRETRAIN = TinyPretrainConfig(embedder=TinyEmbedderPretrainConfig(steps=0),
                                 policy=TinyPolicyPretrainConfig(steps=0))
SHORT_PRETRAIN = TinyPretrainConfig(
    embedder=TinyEmbedderPretrainConfig(num_videos=32, steps=2, batch_size=4, backgrounds_per_batch=2),
    policy=TinyPolicyPretrainConfig(num_videos=32, steps=2, batch_size=2))


def test_the_embedder_starts_from_the_policy_without_its_lm_head(tmp_path):
    import shutil

    policy_dir, embedder_dir = build_tiny_models(tmp_path / "m", pretrain=NO_PRETRAIN)
    start = tmp_path / "embedder"
    shutil.copytree(embedder_dir, start)
    embedder_from_policy(policy_dir, start)
    policy, copied, own = load_policy(policy_dir)[0], load_embedder(start), load_embedder(embedder_dir)
    theirs = policy.model.state_dict()
    assert set(copied.state_dict()) == set(theirs)  # every weight but the LM head
    for name, weight in copied.state_dict().items():
        assert torch.equal(weight, theirs[name]), name
    # the builder's own random embedder is another model: the copy is what changed it
    assert not torch.equal(own.get_input_embeddings().weight, copied.get_input_embeddings().weight)


def test_build_is_cached_and_rebuilt_on_recipe_change(tmp_path):
    first = build_tiny_models(tmp_path, video=VideoConfig(max_frames=8), pretrain=NO_PRETRAIN)
    stamp = (first[0] / "model.safetensors").stat().st_mtime_ns
    again = build_tiny_models(tmp_path, video=VideoConfig(max_frames=8), pretrain=NO_PRETRAIN)
    assert again == first and (first[0] / "model.safetensors").stat().st_mtime_ns == stamp
    build_tiny_models(tmp_path, video=VideoConfig(max_frames=16), pretrain=NO_PRETRAIN)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["recipe"]["video"]["max_frames"] == 16 and manifest["pretrain"] == {}


def test_same_seed_same_weights_pretraining_included(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    a = build_tiny_models(tmp_path / "a", seed=3, pretrain=SHORT_PRETRAIN)
    b = build_tiny_models(tmp_path / "b", seed=3, pretrain=SHORT_PRETRAIN)
    # the pretraining child hands nothing back through torch's fd sharing, whose thread
    # would stay blocked in the caller (the training driver) until interpreter exit
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name != "tqdm_monitor"]
    assert not left, f"the build left threads behind: {left}"
    for load, i in ((lambda d: load_policy(d)[0], 0), (load_embedder, 1)):
        ma, mb = load(a[i]), load(b[i])
        for (na, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), na
    reports = json.loads((tmp_path / "a" / MANIFEST).read_text())["pretrain"]
    assert reports["embedder"]["steps"] == reports["policy"]["steps"] == 2
    assert reports["embedder"]["heldout_queries"] > 0 and reports["policy"]["heldout_videos"] > 0


def test_fresh_sqr_heads_append_nothing_yet():
    """A refinement starts as the unrefined query: the append projector's output is zero."""
    heads = SQRHeads(SQRHeadsConfig(policy_hidden=16, soft_dim=8, embedder_hidden=12))
    soft = heads.soft_tokens(torch.randn(2, 8, 16))
    assert soft.abs().sum() > 0 and not heads.to_embedder(soft).any()


def test_sqr_heads_round_trip(tmp_path, model_dirs):
    heads = SQRHeads.load(model_dirs[0])
    with torch.no_grad():  # as after training: a zero append projector would compare nothing
        heads.append_projector[-1].weight.normal_()
    heads.save(tmp_path)
    again = SQRHeads.load(tmp_path)
    x = torch.randn(2, 8, heads.cfg.policy_hidden)
    assert torch.equal(heads.to_embedder(heads.soft_tokens(x)), again.to_embedder(again.soft_tokens(x)))


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "nope")):
        load_policy(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="sqr"):
        SQRHeads.load(tmp_path)


def test_shipped_models_are_copied_in_checked_and_only_for_their_recipe(tmp_path):
    from tiny.build import ShippedModelError, ship_tiny_models

    video = VideoConfig(max_frames=8)
    built = build_tiny_models(tmp_path / "built", video=video, pretrain=NO_PRETRAIN)
    shipped = ship_tiny_models(tmp_path / "built", tmp_path / "shipped")
    files = json.loads((shipped / MANIFEST).read_text())["files"]
    assert "tiny-qwen3vl-policy/model.safetensors" in files and len(files) > 6

    got = build_tiny_models(tmp_path / "cache", video=video, pretrain=NO_PRETRAIN, shipped=shipped)
    for a, b in zip(built, got, strict=True):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "cache" / MANIFEST).read_text())["source"] == str(shipped)
    build_tiny_models(tmp_path / "cache", video=video, pretrain=NO_PRETRAIN, shipped=shipped,
                      force=True)  # `models tiny --force`: built here although shipped
    assert "source" not in json.loads((tmp_path / "cache" / MANIFEST).read_text())

    other = build_tiny_models(tmp_path / "other", video=VideoConfig(max_frames=16),
                              pretrain=NO_PRETRAIN, shipped=shipped)  # another recipe: built here
    assert "source" not in json.loads((tmp_path / "other" / MANIFEST).read_text())
    assert other[0].is_dir()

    weights = shipped / "tiny-qwen3vl-embedder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ShippedModelError, match="tiny-qwen3vl-embedder/model.safetensors"):
        build_tiny_models(tmp_path / "fresh", video=video, pretrain=NO_PRETRAIN, shipped=shipped)


def test_the_repository_ships_the_default_recipe():
    """The shipped models are the ones the embedded default asks for: a recipe change without
    `videosearch models tiny --force --ship` would silently pretrain on every first run again."""
    from config import load_config
    from tiny.build import SHIPPED, recipe_of

    cfg = load_config("cpu_tiny")
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    assert manifest["recipe"] == recipe_of(cfg.video, cfg.model.tiny_pretrain, cfg.sqr.num_tokens,
                                           cfg.model.seed)
    assert manifest["pretrain"]["embedder"]["steps"] == cfg.model.tiny_pretrain.embedder.steps
