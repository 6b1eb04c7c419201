"""Rows (one sequence each, from a trajectory turn or an SFT example) -> padded model inputs.

Rows are split into shared prefixes and per-row suffixes (learner.shared_prefix says why),
both right-padded; Qwen3-VL's M-RoPE positions skip padding through the attention mask, so a
row's logits do not depend on what it is batched with. Each row carries its own video (pixel
patches concatenated in prefix order, one grid per video), re-decoded with the config's video
settings; decoded videos are cached because a GRPO group shows one video to G samples.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch

from config.schema import VideoConfig
from corpus.video import DecodedVideo, decode_video
from learner.losses import IGNORE
from models.prompts import hf_video_inputs


@dataclass
class Row:
    ids: list[int]  # expanded prompt + response (+ SQR slots)
    mask: list[int]  # over ids: 1 where the token is a learned target
    video: dict[str, torch.Tensor] | None  # pixel_values_videos, video_grid_thw
    sampled: list[float] | None = None  # sampler log-probs of the masked tokens, in order
    advantage: float = 0.0
    weight: float = 1.0  # 0 for filler rows that only keep the ranks' collectives in step
    num_slots: int = 0  # SQR slot tokens at the end of ids
    query: str = ""
    positive: np.ndarray | None = None  # [D_emb] ground-truth video vector (InfoNCE)
    negatives: np.ndarray | None = None  # [K, D_emb]
    nce_weight: float = 0.0
    latent_action: np.ndarray | None = None  # [N, D] the soft tokens searched (latent policy)
    latent_weight: float = 0.0  # 1 where the turn refined with a sampled action
    stale: bool = False  # sampled by an older policy than the one trained (decoupled PPO)
    slot_words: list[int] | None = None  # SFT: token ids the slots' logits should name, <= N

    def filler(self) -> Row:
        return dataclasses.replace(self, advantage=0.0, weight=0.0, nce_weight=0.0,
                                   latent_weight=0.0)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of PolicyWithHeads.forward
    # Each row is cut where its logits start (at the token predicting its first learned token):
    # before that cut it is a prefix, forwarded once per distinct prefix
    # (learner.shared_prefix); after it, a suffix of S_i tokens with logits [B, S, V].
    labels: torch.Tensor  # [B, S-1] each row's tokens after its cut, aligned with logits[:, :-1]
    mask: torch.Tensor  # [B, S-1] float, label mask times row weight
    sampled: torch.Tensor  # [B, S-1] sampler log-probs at masked labels, 0 elsewhere
    advantages: torch.Tensor  # [B]
    rows: list[Row]

    def nce_inputs(self, device) -> tuple[list[int], list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows with an InfoNCE target (all of SFT's; GRPO's refined turns that carry the
        index's vectors), at least one: (their indices, queries, positives [n, D], negatives
        [n, K, D], InfoNCE weights [n])."""
        index = [i for i, r in enumerate(self.rows) if r.positive is not None]
        rows = [self.rows[i] for i in index]
        pos = torch.from_numpy(np.stack([r.positive for r in rows])).float().to(device)
        neg = torch.from_numpy(np.stack([r.negatives for r in rows])).float().to(device)
        w = torch.tensor([r.nce_weight * r.weight for r in rows], device=device)
        return index, [r.query for r in rows], pos, neg, w

    def latent_actions(self, shape: tuple[int, int], device) -> torch.Tensor:
        """[B, N, D] the soft-token actions; zeros for rows without one (weight 0)."""
        actions = np.stack([np.zeros(shape, np.float32) if r.latent_action is None
                            else np.asarray(r.latent_action, np.float32) for r in self.rows])
        return torch.from_numpy(actions).to(device)

    def slot_labels(self, num_slots: int, device) -> torch.Tensor:
        """[B, N] long: each row's slot words, IGNORE after them and in rows without any."""
        labels = torch.full((len(self.rows), num_slots), IGNORE, dtype=torch.long)
        for i, r in enumerate(self.rows):
            if r.slot_words and r.weight:
                labels[i, :len(r.slot_words)] = torch.tensor(r.slot_words[:num_slots])
        return labels.to(device)

    def stale(self, device) -> torch.Tensor:
        """[B] bool: rows sampled by an older policy than the learner's."""
        return torch.tensor([r.stale for r in self.rows], device=device)

    def latent_weights(self, device) -> torch.Tensor:
        """[B] 1 for rows whose turn refined with a sampled action (times the row weight)."""
        return torch.tensor([r.latent_weight * r.weight for r in self.rows], device=device)


class VideoInputs:
    """Path -> transformers video inputs, decoded exactly as the rollout decoded them."""

    def __init__(self, processor, video: VideoConfig, cache_size: int = 64):
        self.processor = processor
        self.video = video
        self.inputs = functools.lru_cache(maxsize=cache_size)(self._inputs)

    def decode(self, path: str) -> DecodedVideo:
        return decode_video(path, self.video)

    def _inputs(self, path: str) -> dict[str, torch.Tensor]:
        return hf_video_inputs(self.processor, self.decode(path))

    def for_turn(self, path: str, frame_times: list[float]) -> dict[str, torch.Tensor]:
        times = self.decode(path).timestamps
        if len(times) != len(frame_times) or not np.allclose(times, frame_times, atol=1e-6):
            raise ValueError(f"{path}: re-decoded frame times {times.tolist()} differ from the "
                             f"rollout's {list(frame_times)}: video settings changed?")
        return self.inputs(path)


def _check_video(row: Row, video_token: int, merge: int) -> None:
    n_tokens = row.ids.count(video_token)
    expected = 0 if row.video is None else int(row.video["video_grid_thw"].prod(-1).sum()) // merge**2
    if n_tokens != expected:
        raise ValueError(f"row has {n_tokens} video tokens but its video needs {expected}: "
                         "prompt ids must be expanded as the engine saw them")


def cut(row: Row) -> int:
    """Where a row's suffix starts: at the token whose logit predicts its first learned token
    (its last token when nothing is learned)."""
    first = row.mask.index(1, 1) if 1 in row.mask[1:] else len(row.ids)
    return first - 1


def _same_video(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or (torch.equal(a["video_grid_thw"], b["video_grid_thw"])
                      and torch.equal(a["pixel_values_videos"], b["pixel_values_videos"]))


def prefix_groups(rows: list[Row]) -> tuple[list[int], list[int]]:
    """(each row's group, the first row of each group): rows share a group when the tokens
    before their cuts and their videos are the same."""
    group, firsts, by_ids = [], [], {}
    for i, r in enumerate(rows):
        same = by_ids.setdefault(tuple(r.ids[:cut(r)]), [])
        g = next((g for g in same if _same_video(rows[firsts[g]].video, r.video)), None)
        if g is None:
            g = len(firsts)
            firsts.append(i)
            same.append(g)
        group.append(g)
    return group, firsts


def _padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
    return ids, attn


def collate(rows: list[Row], processor, merge: int, device) -> Batch:
    pad = processor.tokenizer.pad_token_id
    video_token = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    cuts = []
    for i, r in enumerate(rows):
        if len(r.mask) != len(r.ids):
            raise ValueError(f"row {i}: mask length {len(r.mask)} != ids length {len(r.ids)}")
        _check_video(r, video_token, merge)
        cuts.append(cut(r))
        if cuts[-1] < 1:
            raise ValueError(f"row {i}: its first token is learned; a row needs a prompt token "
                             "before its first learned one")
    group, firsts = prefix_groups(rows)
    prefix_ids, prefix_mask = _padded([rows[f].ids[:cuts[f]] for f in firsts], pad)
    ids, attn = _padded([r.ids[c:] for r, c in zip(rows, cuts, strict=True)], pad)
    width = ids.shape[1] - 1
    labels = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width))
    sampled = torch.zeros((len(rows), width))
    for i, (r, c) in enumerate(zip(rows, cuts, strict=True)):
        n = len(r.ids) - 1 - c
        labels[i, :n] = torch.tensor(r.ids[c + 1:], dtype=torch.long)
        mask[i, :n] = torch.tensor(r.mask[c + 1:], dtype=torch.float) * r.weight
        if r.sampled is not None:
            where = torch.tensor(r.mask[c + 1:], dtype=torch.bool).nonzero().flatten()
            if len(where) != len(r.sampled):
                raise ValueError(f"row {i}: {len(r.sampled)} sampler log-probs for {len(where)} "
                                 "learned tokens")
            sampled[i, where] = torch.tensor(r.sampled, dtype=torch.float)
    inputs = dict(prefix_ids=prefix_ids, prefix_mask=prefix_mask,
                  prefix_mm_token_type_ids=torch.as_tensor(
                      processor.create_mm_token_type_ids(prefix_ids.tolist())),
                  input_ids=ids, attention_mask=attn, group=torch.tensor(group))
    videos = [rows[f].video for f in firsts if rows[f].video is not None]
    if videos:
        inputs["pixel_values_videos"] = torch.cat([v["pixel_values_videos"] for v in videos])
        inputs["video_grid_thw"] = torch.cat([v["video_grid_thw"] for v in videos])
    slots = {r.num_slots for r in rows}
    if slots != {0}:
        if len(slots) != 1:
            raise ValueError(f"rows of one batch need the same number of slots, got {slots}")
        n = slots.pop()
        inputs["slot_index"] = attn.sum(-1, keepdim=True) - n + torch.arange(n)
    return Batch(inputs={k: v.to(device) for k, v in inputs.items()}, labels=labels.to(device),
                 mask=mask.to(device), sampled=sampled.to(device),
                 advantages=torch.tensor([r.advantage for r in rows], device=device), rows=rows)
