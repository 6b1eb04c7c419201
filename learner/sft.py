"""SFT cold start: cross-entropy over the assistant tokens plus lambda x InfoNCE on the refined
query vector, for one micro-batch. The same code runs under the LearnerGroup's DeepSpeed engine
and in a plain torch loop (or Ray Train): `model` is anything with PolicyWithHeads.forward.

Each row is prompt + target + N slot tokens: the slots come after the response's <REFINE>, as in
the rollout, and causal attention keeps them from changing the target tokens' logits, so one
forward serves both terms. The soft tokens (already through both projectors) replace the slot
embeddings of the frozen embedder, whose gradient flows back into the projectors and the policy.
InfoNCE counts only not-matched rows: after a matched answer nothing is searched again.
With sqr.slot_word_weight > 0 the same forward's logits at the slots are also trained to name
the words the shown video lacks (losses.slot_word_loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from config.schema import LearnerConfig
from learner.batch import Batch, Row, VideoInputs
from learner.losses import IGNORE, refined_query_infonce, sft_loss, sft_token_loss, slot_word_loss
from learner.module import at_slots
from learner.sft_data import SFTExample
from learner.stats import Stats
from models.prompts import hf_turn_inputs


def sft_rows(examples: list[SFTExample], processor, videos: VideoInputs,
             slot_id: int, num_slots: int) -> list[Row]:
    rows = []
    for ex in examples:
        enc = hf_turn_inputs(processor, ex.query, videos.decode(ex.video_path))
        prompt = enc["input_ids"][0].tolist()
        target = processor.tokenizer(ex.target, add_special_tokens=False).input_ids
        # the words as the embedder reads them mid-sentence (Embedder.word_inputs), cut to N
        words = [t for w in ex.refine_words
                 for t in processor.tokenizer(" " + w, add_special_tokens=False).input_ids]
        rows.append(Row(
            ids=prompt + target + [slot_id] * num_slots,
            mask=[0] * len(prompt) + [1] * len(target) + [0] * num_slots,
            video={k: enc[k] for k in ("pixel_values_videos", "video_grid_thw")},
            num_slots=num_slots, query=ex.query, positive=ex.positive, negatives=ex.negatives,
            nce_weight=float(ex.answer == "not_matched"), slot_words=words[:num_slots] or None))
    return rows


def embedder_encode(embedder):
    """(texts, soft tokens already in the embedder's input space) -> query vectors, with the
    gradient flowing back into the soft tokens (the embedder itself is frozen)."""
    return lambda texts, soft: embedder.encode_queries(texts, soft, projector=nn.Identity())


def normalisers(rows: list[Row]) -> tuple[float, float, float]:
    """(assistant tokens, InfoNCE rows, slot words) of a whole mini-batch."""
    return (float(sum(sum(r.mask[1:]) * r.weight for r in rows)),
            float(sum(r.nce_weight * r.weight for r in rows)),
            float(sum(len(r.slot_words or ()) * r.weight for r in rows)))


class SFTLoss:
    """Callable per micro-batch: its share of the mini-batch's global means (like GRPOLoss)."""

    def __init__(self, lcfg: LearnerConfig, embedder, slot_word_weight: float = 0.0):
        self.lcfg = lcfg
        self.encode = embedder_encode(embedder)
        self.slot_word_weight = slot_word_weight

    def __call__(self, model: Callable, batch: Batch, key, norms: tuple[float, float, float],
                 stats: Stats) -> torch.Tensor:
        logits, soft, _ = model(**batch.inputs)
        tokens = batch.mask.sum()
        ce_sum = sft_token_loss(logits[:, :-1], batch.labels, batch.mask) * tokens
        per_row, weights = refined_query_infonce(self.encode, batch, soft, self.lcfg.infonce_tau)
        nce_sum = (per_row * weights).sum()
        n_tok, n_nce = max(norms[0], 1.0), max(norms[1], 1.0)
        stats.add("ce", (ce_sum / tokens.clamp(min=1)).item(), float(tokens))
        stats.add("infonce", (nce_sum / weights.sum().clamp(min=1)).item(), float(weights.sum()))
        stats.total("tokens", float(tokens))
        slot_index = batch.inputs["slot_index"]
        labels = batch.slot_labels(slot_index.shape[1], logits.device)
        words = (labels != IGNORE).sum()
        slot_sum = slot_word_loss(at_slots(logits, slot_index), labels)
        stats.add("slot_words", (slot_sum / words.clamp(min=1)).item(), float(words))
        return sft_loss(ce_sum / n_tok, nce_sum / n_nce, self.lcfg.infonce_lambda,
                        slot_sum / max(norms[2], 1.0), self.slot_word_weight)
