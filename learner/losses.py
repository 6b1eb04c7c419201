"""GRPO and SFT losses in plain torch, kept free of Ray and DeepSpeed so they can be tested by hand.

Shapes: B sequences, T tokens, V vocabulary, D embedding width, K negatives. A mask is 1 on the
tokens that count (generated tokens for GRPO, assistant tokens for SFT) and 0 elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from config.schema import KLEstimator, LossAggregation

IGNORE = -100  # a label cross_entropy skips


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    # clamp: an all-masked batch gives 0 instead of NaN.
    return (x * mask).sum() / mask.sum().clamp(min=1)


def group_advantages(
    rewards: Tensor, groups: Tensor | int, std_normalize: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantages: each reward relative to the other samples of its prompt's group.

    `groups` is either a [B] tensor of group ids or a group size (groups are then contiguous).
    The std is the population std (unbiased=False): a group of G samples is the whole group, not
    a sample of one, and it stays defined for G=1. Groups with one member or all-equal rewards
    carry no learning signal and get exactly 0, not roundoff divided by eps.
    """
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).flatten()
    if isinstance(groups, int):
        if groups <= 0 or r.numel() % groups:
            raise ValueError(f"{r.numel()} rewards do not split into groups of {groups}")
        ids = torch.arange(r.numel(), device=r.device) // groups
    else:
        ids = torch.unique(groups.flatten(), return_inverse=True)[1].to(r.device)
    n = int(ids.max()) + 1 if r.numel() else 0
    count = r.new_zeros(n).index_add_(0, ids, torch.ones_like(r))
    adv = r - (r.new_zeros(n).index_add_(0, ids, r) / count)[ids]
    if std_normalize:
        std = (r.new_zeros(n).index_add_(0, ids, adv**2) / count).sqrt()
        adv = adv / (std[ids] + eps)
    hi = r.new_full((n,), float("-inf")).scatter_reduce(0, ids, r, "amax")
    lo = r.new_full((n,), float("inf")).scatter_reduce(0, ids, r, "amin")
    return torch.where((hi == lo)[ids], torch.zeros_like(adv), adv)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator | str) -> Tensor:
    """Per-token estimate of KL(policy || ref) from samples of the policy.

    k1 = lp - ref is unbiased but can be negative per token; k3 = exp(ref - lp) - (ref - lp) - 1
    is also unbiased, always >= 0 and lower-variance, hence the default.
    """
    log_ratio = ref_logprobs - logprobs
    if KLEstimator(estimator) is KLEstimator.k1:
        return -log_ratio
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_beta: float = 0.0,
    kl_estimator: KLEstimator | str = KLEstimator.k3,
    aggregation: LossAggregation | str = LossAggregation.token_mean,
    behaviour_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Token-level PPO-clip surrogate with an optional KL-to-reference penalty.

    `behaviour_weights` [B, T] (decoupled PPO, for tokens sampled by an older policy than
    `old_logprobs`'): each token's surrogate is weighted by pi_old / pi_behaviour, capped by the
    caller; the clip stays around the learner's own pre-update policy.

    The ratio is clipped to [1 - clip_eps, 1 + clip_eps_high] (clip_eps_high defaults to
    clip_eps); a higher upper bound (DAPO's clip-higher) lets low-probability tokens with positive
    advantage grow faster, which keeps entropy from collapsing. token_mean weights every token
    equally across the batch; seq_mean weights every sequence equally (GRPO paper), which gives
    short answers more weight per token. Sequences with an empty mask are left out of seq_mean.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if behaviour_weights is not None:
        per_token = per_token * behaviour_weights.detach().to(per_token.dtype)
    kl = None
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        per_token = per_token + kl_beta * kl
    if LossAggregation(aggregation) is LossAggregation.token_mean:
        loss = _masked_mean(per_token, mask)
    else:
        lengths = mask.sum(-1)
        per_seq = (per_token * mask).sum(-1) / lengths.clamp(min=1)
        loss = _masked_mean(per_seq, (lengths > 0).to(per_seq.dtype))
    with torch.no_grad():
        stats = {
            "clip_fraction": _masked_mean((clipped < unclipped).to(mask.dtype), mask).item(),
            "approx_kl": _masked_mean(kl_penalty(logprobs, old_logprobs, "k3"), mask).item(),
            "kl_ref": 0.0 if kl is None else _masked_mean(kl, mask).item(),
            "ratio": _masked_mean(ratio, mask).item(),
        }
    return loss, stats


@torch.no_grad()
def behaviour_weights(old_logprobs: Tensor, sampled_logprobs: Tensor, stale: Tensor,
                      cap: float) -> Tensor:
    """[B, T] min(pi_old / pi_behaviour, cap) on the rows sampled by an older policy (`stale`,
    [B] bool), 1 elsewhere: a row sampled by the weights being trained needs no correction
    (its behaviour policy is the old policy, up to engine numerics)."""
    weights = torch.exp(old_logprobs - sampled_logprobs).clamp(max=cap)
    return torch.where(stale.unsqueeze(-1), weights, torch.ones_like(weights))


@torch.no_grad()
def logprob_mismatch(learner_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> float:
    """Mean |learner - sampler| log-prob on masked tokens.

    The sampler (vLLM) and the learner should agree on the same weights; drift here means stale
    weights or a numerics gap that silently makes the update off-policy.
    """
    mask = mask.to(learner_logprobs.dtype)
    return _masked_mean((learner_logprobs - sampler_logprobs).abs(), mask).item()


def token_logprobs(logits: Tensor, labels: Tensor, top_p: float = 1.0) -> Tensor:
    """Log-prob of each label under its logits, as float32 [B, T].

    Labels must already be aligned with the logits (the caller shifts). One row at a time goes
    through float32 log_softmax, so a bf16 batch never holds a full float32 [B, T, V] copy at once
    when no graph is kept (old/ref log-probs). Negative labels (ignore_index) are gathered at
    token 0; callers mask them out. With `top_p` < 1 the log-probs are those of the nucleus the
    sampler drew from (see `nucleus`).
    """
    index = labels.clamp(min=0).unsqueeze(-1)
    rows = [
        torch.log_softmax(nucleus(lg.float(), ix, top_p), -1).gather(-1, ix).squeeze(-1)
        for lg, ix in zip(logits, index, strict=True)
    ]
    return torch.stack(rows)


def nucleus(logits: Tensor, index: Tensor, top_p: float) -> Tensor:
    """Logits [T, V] outside each position's top-p nucleus set to -inf, by vLLM's rule (sorted
    ascending, a token goes when the probability mass up to and including it is <= 1 - top_p;
    the most likely token always stays), so the learner's distribution is the one sampled
    from. The label (`index`, [T, 1]) always stays: a learner-vs-sampler numerics gap at the
    nucleus edge must not make a sampled token impossible (-inf log-prob)."""
    if top_p >= 1.0:
        return logits
    if not 0.0 < top_p:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = logits.sort(-1)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_sorted[:, -1] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    drop.scatter_(-1, index, False)
    return logits.masked_fill(drop, float("-inf"))


def sft_token_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over masked (assistant) tokens; prompt and tool output are not learned."""
    return -_masked_mean(token_logprobs(logits, labels), mask.float())


def info_nce_from_scores(pos: Tensor, neg: Tensor, tau: float = 0.1) -> Tensor:
    """InfoNCE from similarity scores pos [B] and neg [B, K], for scores that come from the index."""
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1) / tau
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def info_nce(query: Tensor, positives: Tensor, negatives: Tensor, tau: float = 0.1) -> Tensor:
    """InfoNCE with cosine similarity, so the loss depends on direction only, as retrieval does."""
    q, p, n = (F.normalize(x, dim=-1) for x in (query, positives, negatives))
    return info_nce_from_scores((q * p).sum(-1), torch.einsum("bd,bkd->bk", q, n), tau)


def refined_query_infonce(encode, batch, soft: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(per-row InfoNCE [n], weights [n]) of the rows of `batch` with an InfoNCE target: each
    row's query encoded with its soft tokens `soft` [B, N, D_emb] (already in the embedder's
    input space) by `encode(texts, soft)`, against its ground truth and negatives. One row at a
    time through info_nce, so a row's value does not depend on its neighbours. A batch without
    such a row gives one zero of weight 0 that still reaches `soft` (a zero gradient on every
    rank, as ZeRO reduces every trained parameter)."""
    if all(r.positive is None for r in batch.rows):
        return soft.sum()[None] * 0.0, soft.new_zeros(1)
    index, queries, pos, neg, weights = batch.nce_inputs(soft.device)
    q = encode(queries, soft[index])
    per_row = torch.stack([info_nce(q[i:i + 1], pos[i:i + 1], neg[i:i + 1], tau)
                           for i in range(len(index))])
    return per_row, weights


def refinement_target_error(soft: Tensor, target: Tensor) -> Tensor:
    """[B] each row's squared error of its soft tokens [B, N, D_emb] from the target slot inputs,
    relative to the target's own squared norm (0: exact, 1: as far as predicting zeros), so its
    scale does not depend on the embedder's; 0 for a row whose target is all zeros."""
    norm = (target ** 2).sum((1, 2))
    err = ((soft - target) ** 2).sum((1, 2))
    return torch.where(norm > 0, err / norm.clamp(min=1e-12), err * 0.0)


def slot_word_loss(slot_logits: Tensor, labels: Tensor) -> Tensor:
    """Summed cross-entropy of the policy's logits at the SQR slots [B, N, V] against the words
    each slot should name [B, N] (IGNORE elsewhere): it makes the slot states carry the words
    the shown video lacks, which the heads then map word by word into the embedder."""
    return F.cross_entropy(slot_logits.flatten(0, 1).float(), labels.flatten(),
                           ignore_index=IGNORE, reduction="sum")


def sft_loss(ce: Tensor, nce: Tensor, lam: float, slot_ce: Tensor | float = 0.0,
             slot_weight: float = 0.0) -> Tensor:
    """SFT objective: language-model CE plus lam times the retrieval InfoNCE on the query
    latents, plus slot_weight times the slot words' CE."""
    return ce + lam * nce + slot_weight * slot_ce


LATENT_DUAL_CLIP = 3.0  # a negative advantage costs at most 3 x |A| however far the ratio grew
LATENT_MAX_LOG_RATIO = 20.0


def latent_policy_loss(logprob: Tensor, old_logprob: Tensor, advantages: Tensor,
                       clip_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO-clip on the continuous soft-token action, per row: the ratio of the action's density
    under the new and the old mean, clipped to [1 - eps, 1 + eps], times the episode's
    advantage, with dual clip for negative advantages. A Gaussian over N x D dimensions with a
    small sigma turns a small move of the mean into a huge ratio, so the log-ratio is bounded
    and a negative advantage's objective floored (Ye et al., dual-clip PPO).
    Returns (loss [B], ratio [B], where a clip bound [B] as 0/1)."""
    ratio = torch.exp((logprob - old_logprob).clamp(-LATENT_MAX_LOG_RATIO, LATENT_MAX_LOG_RATIO))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    objective = torch.minimum(unclipped, clipped)
    floor = LATENT_DUAL_CLIP * advantages
    objective = torch.where(advantages < 0, torch.maximum(objective, floor), objective)
    bound = (clipped < unclipped) | ((advantages < 0) & (objective == floor))
    return -objective, ratio.detach(), bound.detach().float()
