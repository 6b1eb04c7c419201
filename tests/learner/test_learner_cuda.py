"""The learner's GPU path, in one process (no Ray): DeepSpeed ZeRO-2 and ZeRO-3 with bf16 and
fp32 master weights, the `nccl` process group, fused AdamW, the bf16 reference model, and the
SFT stage's embedder on the GPU. Selected only where CUDA is (`make test-gpu`); on CPU these
tests are deselected, not skipped. Step times are printed (run with -s) for the record."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

from learner.learner import Learner

pytestmark = pytest.mark.gpu


def zero(cfg, stage: int):
    return dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, zero_stage=stage))


def timed(fn, *args):
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn(*args)
    torch.cuda.synchronize()
    return out, time.perf_counter() - started


@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_step_on_cuda_moves_the_policy_and_exports_full_cpu_tensors(
        stage, process_group, learner_cfg, model_dirs, grpo_samples):
    assert torch.distributed.get_backend() == "nccl"
    learner = Learner(zero(learner_cfg, stage), "grpo", model_dirs[0])
    try:
        assert learner.engine.bfloat16_enabled()
        assert learner.ref is not None  # kl_beta > 0: the frozen bf16 reference is on the GPU
        assert {p.device.type for p in learner.engine.module.parameters()} == {"cuda"}
        _, before, _ = learner.export_weights()
        metrics, first = timed(learner.grpo_step, grpo_samples)
        _, second = timed(learner.grpo_step, grpo_samples)
        version, after, heads = learner.export_weights()
        print(f"\nZeRO-{stage} GRPO step ({len(grpo_samples)} turns): first {first:.3f} s, "
              f"second {second:.3f} s; logprob_mismatch {metrics['logprob_mismatch']:.4f}; "
              f"memory peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        # sampling log-probs came from the fp32 policy on the CPU; the learner runs bf16
        assert metrics["logprob_mismatch"] < learner_cfg.learner.logprob_mismatch_warn
        assert version == 2 and metrics["grad_norm"] > 0
        assert before.keys() == after.keys() and heads
        for name, tensor in after.items():
            assert tensor.device.type == "cpu" and tensor.shape == before[name].shape, name
        assert any(not torch.equal(before[n], after[n]) for n in after)
    finally:
        learner.close()


def test_sft_steps_on_cuda_lower_the_loss(process_group, learner_cfg, model_dirs, sft_examples):
    learner = Learner(learner_cfg, "sft", model_dirs[0], model_dirs[1])
    try:
        assert learner.embedder.device.type == "cuda"
        losses, seconds = [], []
        for _ in range(4):
            metrics, s = timed(learner.sft_step, sft_examples)
            losses.append(metrics["loss"])
            seconds.append(s)
        print(f"\nSFT steps ({len(sft_examples)} examples): loss {[round(x, 3) for x in losses]}, "
              f"seconds {[round(x, 3) for x in seconds]}")
        assert all(math.isfinite(x) for x in losses)
        assert losses[-1] < losses[0]
    finally:
        learner.close()


def test_embedder_on_cuda_matches_the_cpu_one(cfg, model_dirs, synth):
    from retrieval_service.embedder import Embedder

    def build(device):
        return Embedder(model_dirs[1], model_dirs[0], "float32", cfg.model.embed_instruction,
                        cfg.video, device=device)

    gpu, cpu = build("cuda"), build("cpu")
    for embedder in (gpu, cpu):  # a trained (non-zero) append projector, the same on both
        with torch.no_grad():
            weight = embedder.heads.append_projector[-1].weight
            weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    paths = sorted(synth.out_dir.rglob("*.mp4"))[:4]
    videos = [cpu.decode(p) for p in paths]
    texts = ["a red circle moves left", "a blue square grows", "x"]
    soft = torch.randn(len(texts), *cpu.soft_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pairs = [(gpu.encode_videos(videos), cpu.encode_videos(videos)),
                 (gpu.encode_queries(texts).cpu().numpy(), cpu.encode_queries(texts).numpy()),
                 (gpu.encode_queries(texts, soft).cpu().numpy(),
                  cpu.encode_queries(texts, soft).numpy())]
    for on_gpu, on_cpu in pairs:
        cosine = (on_gpu * on_cpu).sum(-1)  # both L2-normalised
        assert cosine.min() > 0.999, cosine
