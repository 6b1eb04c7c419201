"""One learner rank: the DeepSpeed engine over policy + SQR heads, and the SFT and GRPO steps,
checkpoints and weight export on top of it. Plain torch + DeepSpeed; the process group must
exist already (learner.engine.init_distributed), whoever hosts the rank (a LearnerGroup actor,
Ray Train, torchrun).

A learner serves one stage: "sft" trains the language model and the SQR heads against CE +
InfoNCE (the frozen embedder is loaded); "grpo" trains the language model against the policy
loss (the frozen reference is loaded only when kl_beta > 0). GRPO starts from the SFT export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from config.schema import Config
from learner import checkpoint, weights
from learner.batch import Row, VideoInputs, collate, prefix_groups
from learner.engine import build_engine, build_reference, device
from learner.grpo import GRPOLoss, grpo_rows, normaliser, warn_mismatch
from learner.heads_fit import fit_heads
from learner.module import PolicyWithHeads, set_trainable
from learner.sample import Sample
from learner.schedule import plan
from learner.sft import SFTLoss, embedder_encode, normalisers, sft_rows
from learner.sft_data import SFTExample
from learner.shared_prefix import allow_checkpointing
from learner.stats import Stats
from models.loading import load_policy, load_processor
from models.tokens import SQR_SLOT_TOKEN

STAGES = ("sft", "grpo")


class Learner:
    def __init__(self, cfg: Config, stage: str, policy_dir: str | Path,
                 embedder_dir: str | Path | None = None, ds_overrides: dict | None = None):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if not dist.is_initialized():
            raise RuntimeError("join the learner process group first (learner.engine.init_distributed)")
        # the heads train in SFT, and in GRPO under the latent policy; InfoNCE runs through the
        # frozen embedder in SFT, and in GRPO under the latent policy unless its lambda is 0
        latent = stage == "grpo" and cfg.sqr.latent_sigma > 0
        needs_embedder = stage == "sft" or (latent and cfg.sqr.latent_infonce_lambda > 0)
        if needs_embedder and embedder_dir is None:
            raise ValueError(f"the {stage} stage needs the embedder (InfoNCE runs through it)")
        self.cfg, self.stage = cfg, stage
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device()
        self.processor = load_processor(policy_dir)
        self.slot_id = self.processor.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN)
        model, heads = load_policy(policy_dir, "float32")  # master weights; DeepSpeed casts on GPU
        self.merge = model.config.vision_config.spatial_merge_size
        if cfg.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            allow_checkpointing(model)
        module = PolicyWithHeads(model, heads)
        set_trainable(module, heads=stage == "sft" or latent, vision=cfg.learner.train_vision_tower)
        lcfg = cfg.learner
        self.engine = build_engine(module, lcfg, self.world, ds_overrides)
        self.ref = None
        if stage == "grpo" and lcfg.kl_beta > 0:
            ref_dtype = "bfloat16" if self.device.type == "cuda" else "float32"
            self.ref = build_reference(load_policy(policy_dir, ref_dtype)[0], lcfg, self.world,
                                       ds_overrides)
        self.embedder = None
        if needs_embedder:
            from retrieval_service.embedder import Embedder

            self.embedder = Embedder.from_config(cfg, embedder_dir, device=str(self.device))
        self.videos = VideoInputs(self.processor, cfg.video)

    @property
    def version(self) -> int:
        """Optimizer updates applied so far (restored by `load`): the weight version."""
        return int(self.engine.global_steps)

    # ---- steps ------------------------------------------------------------------------
    def grpo_step(self, samples: list[Sample], policy_version: int | None = None
                  ) -> dict[str, float]:
        """One pass over the samples (one optimizer update per mini-batch); every rank gets the
        same samples and takes its own share. `policy_version`: the weight version the learner
        holds, in the samples' numbering; older samples get the decoupled-PPO correction."""
        self._require("grpo")
        started = time.perf_counter()
        lcfg, sqr = self.cfg.learner, self.cfg.sqr
        slots = (self.slot_id, sqr.num_tokens) if sqr.latent_sigma > 0 else None
        rows = grpo_rows(samples, self.videos, slots, policy_version)
        sampling = self.cfg.rollout.sampling
        loss = GRPOLoss(lcfg, self.ref, sampling.temperature, sampling.top_p, sqr,
                        None if self.embedder is None else embedder_encode(self.embedder))
        self._old_logprobs(rows, loss)
        stats = self._train(rows, loss, lambda mb: (normaliser(mb, lcfg.loss_aggregation),
                                                    sum(r.latent_weight * r.weight for r in mb)))
        metrics = self._finish(stats, started)
        if self.rank == 0:
            warn_mismatch(metrics, lcfg.logprob_mismatch_warn)
        return metrics

    def sft_step(self, examples: list[SFTExample]) -> dict[str, float]:
        self._require("sft")
        started = time.perf_counter()
        rows = sft_rows(examples, self.processor, self.videos, self.slot_id, self.cfg.sqr.num_tokens)
        loss = SFTLoss(self.cfg.learner, self.embedder, self.cfg.sqr.slot_word_weight)
        metrics = self._finish(self._train(rows, loss, normalisers), started)
        metrics["loss"] = (metrics["ce"] + self.cfg.learner.infonce_lambda * metrics["infonce"]
                           + self.cfg.sqr.slot_word_weight * metrics["slot_words"])
        return metrics

    def sft_eval(self, examples: list[SFTExample]) -> list[dict[str, float]]:
        """Each example's SFT losses (ce, infonce) without training, one forward each so they
        pair up across evaluations: held-out queries say whether the refinement generalises
        (the training batch's InfoNCE cannot)."""
        self._require("sft")
        rows = sft_rows(examples, self.processor, self.videos, self.slot_id, self.cfg.sqr.num_tokens)
        loss, out = SFTLoss(self.cfg.learner, self.embedder, self.cfg.sqr.slot_word_weight), []
        with torch.no_grad():
            for row in rows:
                stats = Stats()
                for key, mb_rows, batch in self._batches([row]):
                    loss(self.engine, batch, key, normalisers(mb_rows), stats)
                out.append(stats.reduce())
        return out

    def fit_heads(self, examples: list[SFTExample], heldout: list[SFTExample]) -> dict:
        """Fit the SQR heads afresh on this policy's slot states (learner.heads_fit), after the
        stage's last step: every rank forwards the same turns in step (a ZeRO-3 forward is a
        collective), rank 0 fits, and the fitted heads reach every rank's engine. Returns rank
        0's report (`heldout`: the turns its val_error is measured on)."""
        self._require("sft")
        sqr = self.cfg.sqr
        train, val = self._slot_targets(examples), self._slot_targets(heldout)
        state, report = None, {}
        if self.rank == 0:
            heads, report = fit_heads(self.engine.module.heads.cfg, *train, sqr.fit_steps,
                                      sqr.fit_lr, sqr.fit_batch_size, self.cfg.train.seed, val)
            state = heads.state_dict()
        weights.set_heads(self.engine, state)
        return report

    def _slot_targets(self, examples: list[SFTExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """([R, N, H] slot states, [R, N, D_emb] targets) of the examples that name what their
        shown video lacks."""
        chosen = [e for e in examples if e.refine_words]
        n = self.cfg.sqr.num_tokens
        rows = sft_rows(chosen, self.processor, self.videos, self.slot_id, n)
        states = []
        with torch.no_grad():
            for i in range(0, len(rows), self.cfg.learner.micro_batch_size):
                batch = collate(rows[i:i + self.cfg.learner.micro_batch_size], self.processor,
                                self.merge, self.device)
                states.append(self.engine.module.slot_states(**batch.inputs).float())
        hidden = self.engine.module.heads.cfg.policy_hidden
        states = torch.cat(states) if states else torch.zeros(0, n, hidden, device=self.device)
        targets = self.embedder.word_inputs([e.refine_words for e in chosen], n)
        return states, targets.to(self.device)

    def _require(self, stage: str) -> None:
        if self.stage != stage:
            raise RuntimeError(f"this learner serves the {self.stage} stage, not {stage}")

    def _batches(self, rows: list[Row]):
        """((mini, micro) key, mini-batch rows, this rank's micro-batch) in schedule order."""
        lcfg = self.cfg.learner
        groups, _ = prefix_groups(rows)
        for m, mb in enumerate(plan(len(rows), self.rank, self.world, lcfg.micro_batch_size,
                                    lcfg.grad_accum_steps, [len(r.ids) for r in rows], groups)):
            mb_rows = [rows[i] for i in mb.rows]
            for c, idx in enumerate(mb.micro):
                mine = [rows[i] for i in idx] or [mb_rows[0].filler()]
                yield (m, c), mb_rows, collate(mine, self.processor, self.merge, self.device)

    def _old_logprobs(self, rows: list[Row], loss: GRPOLoss) -> None:
        """Pre-update log-probs, needed only when the turns make several optimizer steps (the
        first mini-batch uses its own forward, detached)."""
        if len(rows) <= self.engine.train_batch_size():
            return
        with torch.no_grad():
            for key, _, batch in self._batches(rows):
                if key[0] > 0:
                    loss.old[key] = loss.logprobs(self.engine, batch)

    def _train(self, rows: list[Row], loss_fn: Callable, norm: Callable) -> Stats:
        # DeepSpeed divides by grad_accum_steps and averages over ranks; losses are shares of
        # the global mean, so that is undone here.
        scale = self.cfg.learner.grad_accum_steps * self.world
        stats = Stats()
        norms: dict[int, object] = {}
        for key, mb_rows, batch in self._batches(rows):
            if key[0] not in norms:
                norms[key[0]] = norm(mb_rows)
            loss = loss_fn(self.engine, batch, key, norms[key[0]], stats)
            self.engine.backward(loss * scale)
            self.engine.step()
        return stats

    def _finish(self, stats: Stats, started: float) -> dict[str, float]:
        metrics = stats.reduce()
        grad_norm = self.engine.get_global_grad_norm()
        # threads: what the step seconds were measured on (Ray sets them from the rank's CPUs)
        metrics.update(version=self.version, lr=self.engine.get_lr()[0],
                       step_seconds=time.perf_counter() - started, threads=torch.get_num_threads())
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        return metrics

    # ---- checkpoints and weights ------------------------------------------------------
    def save(self, directory: str | Path, driver_state: dict) -> str:
        return str(checkpoint.save(self.engine, directory, dict(driver_state),
                                   self.cfg.learner.keep_checkpoints))

    def load(self, path: str | Path) -> dict:
        return checkpoint.load(self.engine, path)

    def export_hf(self, out_dir: str | Path) -> str | None:
        out = weights.export_hf(self.engine, self.processor, out_dir)
        return None if out is None else str(out)

    def export_weights(self, policy: bool = True, changed_only: bool = False
                       ) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(version, policy tensors by HF name, heads tensors); tensors on rank 0 only. With
        `changed_only`, only what this stage trains (frozen tensors equal the last full
        export's: the vision tower, and in GRPO without the latent policy the heads)."""
        policy_state, heads = weights.full_state(self.engine, policy, self.sent_names(changed_only))
        return self.version, policy_state, heads

    def sent_names(self, changed_only: bool) -> set[str] | None:
        """The state names a sync sends: None (all), or those this stage trains."""
        return weights.trainable_names(self.engine.module) if changed_only else None

    def close(self) -> None:
        for engine in (self.engine, self.ref):
            if hasattr(engine, "destroy"):
                engine.destroy()
