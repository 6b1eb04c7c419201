import numpy as np
import pytest
import torch

from models.tokens import SQR_SLOT_TOKEN

TEXTS = ["a red circle moves left on a navy background", "a blue square", "x"]


@pytest.fixture(scope="module")
def embedder(cfg, model_dirs):
    """The session's embedder, its append projector no longer zero (as after training)."""
    from retrieval_service.embedder import Embedder

    policy_dir, embedder_dir = model_dirs
    out = Embedder(embedder_dir, policy_dir, cfg.model.dtype, cfg.model.embed_instruction, cfg.video)
    with torch.no_grad():
        out.heads.append_projector[-1].weight.normal_(generator=torch.Generator().manual_seed(0))
    return out


def manual_query(embedder, text: str, soft: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
    """One query, no padding: the plain query's vector plus `scale` times what the slots change
    (the same forward with zero slot inputs subtracted), L2 norm."""
    if soft is None:
        return raw_query(embedder, text, None)
    refined = raw_query(embedder, text, embedder.heads.to_embedder(soft))
    baseline = raw_query(embedder, text, torch.zeros(soft.shape[0], embedder.dim))
    return torch.nn.functional.normalize(
        raw_query(embedder, text, None) + scale * (refined - baseline), dim=-1)


def raw_query(embedder, text: str, slot_embeds: torch.Tensor | None) -> torch.Tensor:
    """Chat template, embedding lookup, slots overwritten one by one, an inputs_embeds
    forward, the last token's hidden state, L2 norm."""
    n = 0 if slot_embeds is None else slot_embeds.shape[0]
    messages = [{"role": "system", "content": [{"type": "text", "text": embedder.instruction}]},
                {"role": "user", "content": [{"type": "text", "text": text + SQR_SLOT_TOKEN * n}]}]
    prompt = embedder.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = embedder.tokenizer(prompt, return_tensors="pt")["input_ids"]
    embeds = embedder.model.get_input_embeddings()(ids)
    slots = (ids[0] == embedder.slot_id).nonzero().flatten().tolist()
    assert len(slots) == n
    if slot_embeds is not None:
        projected = slot_embeds
        rows = [embeds[0, i] for i in range(ids.shape[1])]
        for j, pos in enumerate(slots):
            rows[pos] = projected[j]
        embeds = torch.stack(rows)[None]
        assert slots == list(range(slots[0], slots[0] + n)), "slots sit together"
    # Explicit positions: without input_ids the model would reuse the M-RoPE deltas cached
    # by its last video forward.
    positions = torch.arange(ids.shape[1])[None]
    hidden = embedder.model(inputs_embeds=embeds, position_ids=positions).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden, dim=-1)


def test_model_is_frozen(embedder):
    assert not any(p.requires_grad for p in embedder.model.parameters())
    assert not any(p.requires_grad for p in embedder.heads.parameters())
    assert not embedder.model.training


def test_soft_token_path_equals_manual_inputs_embeds_forward(embedder):
    n, d = embedder.soft_shape
    soft = torch.randn(len(TEXTS), n, d, generator=torch.Generator().manual_seed(0))
    batched = embedder.encode_queries(TEXTS, soft)
    manual = torch.stack([manual_query(embedder, t, soft[i]) for i, t in enumerate(TEXTS)])
    torch.testing.assert_close(batched, manual, atol=1e-5, rtol=0)
    plain = torch.stack([manual_query(embedder, t, None) for t in TEXTS])
    torch.testing.assert_close(embedder.encode_queries(TEXTS), plain, atol=1e-5, rtol=0)
    assert (batched - plain).norm(dim=-1).min() > 1e-3, "the soft tokens change the query"


def test_refine_scale_steps_along_what_the_soft_tokens_change(embedder):
    """`sqr.refine_scale` s: normalise(q(text) + s * (q(text, soft) - q(text, 0))); a smaller
    step leaves the refined query nearer the plain one."""
    n, d = embedder.soft_shape
    soft = torch.randn(len(TEXTS), n, d, generator=torch.Generator().manual_seed(1))
    plain = embedder.encode_queries(TEXTS)
    full = embedder.encode_queries(TEXTS, soft)
    embedder.refine_scale = 0.5
    try:
        half = embedder.encode_queries(TEXTS, soft)
    finally:
        embedder.refine_scale = 1.0
    manual = torch.stack([manual_query(embedder, t, soft[i], 0.5) for i, t in enumerate(TEXTS)])
    torch.testing.assert_close(half, manual, atol=1e-5, rtol=0)
    assert ((half * plain).sum(-1) > (full * plain).sum(-1)).all()


def test_a_zero_append_projector_searches_exactly_as_the_text(embedder):
    """A fresh SQR append projector outputs zero: the refinement starts at the plain query."""
    n, d = embedder.soft_shape
    soft = torch.randn(len(TEXTS), n, d)
    zero = torch.nn.Linear(d, embedder.dim)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    torch.testing.assert_close(embedder.encode_queries(TEXTS, soft, projector=zero),
                               embedder.encode_queries(TEXTS), atol=1e-6, rtol=0)


def test_gradient_reaches_soft_tokens_and_a_trainable_projector(embedder):
    n, d = embedder.soft_shape
    soft = torch.randn(2, n, d, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(2, embedder.dim), dim=-1)
    (embedder.encode_queries(TEXTS[:2], soft) * target).sum().backward()
    assert soft.grad is not None and (soft.grad.abs().sum(-1) > 0).all()

    projector = torch.nn.Linear(d, embedder.dim)  # the learner's trainable append projector
    (embedder.encode_queries(TEXTS[:2], soft.detach(), projector=projector) * target).sum().backward()
    assert projector.weight.grad is not None and projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in embedder.model.parameters())


def test_queries_are_padding_invariant(embedder):
    n, d = embedder.soft_shape
    soft = torch.randn(len(TEXTS), n, d)
    for s in (None, soft):
        batched = embedder.encode_queries(TEXTS, s)
        single = torch.cat([embedder.encode_queries([t], None if s is None else s[i:i + 1])
                            for i, t in enumerate(TEXTS)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.norm(dim=-1), torch.ones(len(TEXTS)))


def test_videos_are_padding_invariant(embedder, synth):
    paths = sorted((synth.out_dir / "videos").glob("*.mp4"))[:3]
    videos = [embedder.decode(p) for p in paths]
    videos[1].frames, videos[1].timestamps = videos[1].frames[:5], videos[1].timestamps[:5]
    batched = embedder.encode_videos(videos)
    single = np.concatenate([embedder.encode_videos([x]) for x in videos])
    assert batched.shape == (3, embedder.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-6)


def test_bad_inputs(embedder):
    with pytest.raises(ValueError, match="may not contain"):
        embedder.encode_queries([f"a {SQR_SLOT_TOKEN} b"])
    with pytest.raises(ValueError, match="soft_tokens must be"):
        embedder.encode_queries(TEXTS, torch.zeros(1, 8, 256))


def test_query_vectors_do_not_depend_on_the_previous_video_forward(embedder, synth):
    """The base model caches M-RoPE deltas per forward; queries must not pick them up."""
    before = embedder.encode_queries(TEXTS)
    paths = sorted((synth.out_dir / "videos").glob("*.mp4"))[:4]
    embedder.encode_videos([embedder.decode(p) for p in paths])
    torch.testing.assert_close(embedder.encode_queries(TEXTS), before, atol=1e-6, rtol=0)


def test_word_inputs_are_the_embedders_inputs_of_the_words_mid_sentence(embedder):
    table = embedder.model.get_input_embeddings().weight
    pieces = embedder.tokenizer(" red navy", add_special_tokens=False).input_ids
    out = embedder.word_inputs([("red", "navy"), (), ("red",) * 20], 4)
    assert out.shape == (3, 4, embedder.dim) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, :len(pieces)], table[pieces].float())
    assert not out[0, len(pieces):].any() and not out[1].any()
    # cut to the slots: 20 words fill 4
    assert (out[2].abs().sum(-1) > 0).all()


def test_from_config_takes_the_configs_settings_and_a_callers_overrides(cfg, model_dirs):
    """Every site that builds an embedder from the config goes through here: the refinement's
    step and the instruction must reach it, and a benchmark's own dtype or step must win."""
    import dataclasses

    from retrieval_service.embedder import Embedder

    policy_dir, embedder_dir = model_dirs
    changed = dataclasses.replace(
        cfg, sqr=dataclasses.replace(cfg.sqr, refine_scale=0.25),
        model=dataclasses.replace(cfg.model, embed_instruction="Find the clip."))
    built = Embedder.from_config(changed, embedder_dir, policy_dir, device="cpu")
    assert (built.refine_scale, built.instruction) == (0.25, "Find the clip.")
    assert built.video == cfg.video and built.heads is not None
    plain = Embedder.from_config(changed, embedder_dir, refine_scale=1.0)
    assert plain.refine_scale == 1.0 and plain.heads is None
