"""Hand-computed checks of the GRPO and SFT losses."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config.schema import KLEstimator, LossAggregation
from learner.losses import (
    behaviour_weights,
    group_advantages,
    info_nce,
    info_nce_from_scores,
    kl_penalty,
    logprob_mismatch,
    policy_loss,
    sft_loss,
    sft_token_loss,
    token_logprobs,
)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.tensor(b), atol=tol)


# --- advantages ---------------------------------------------------------------------------


def test_advantages_std_normalized_per_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert close(adv, [1.0, -1.0, -1.0, 1.0], 1e-4)  # mean 0.5, population std 0.5


def test_advantages_use_population_std():
    adv = group_advantages(torch.tensor([3.0, 0.0, 0.0]), 3)  # mean 1, std sqrt(6/3)
    s = math.sqrt(2.0)
    assert close(adv, [2 / s, -1 / s, -1 / s], 1e-4)


def test_advantages_mean_only():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, std_normalize=False)
    assert close(adv, [0.5, -0.5, -0.5, 0.5])


def test_advantages_degenerate_groups_are_zero():
    assert torch.equal(group_advantages(torch.tensor([2.0, 2.0]), 2), torch.zeros(2))
    assert torch.equal(group_advantages(torch.tensor([4.0, -1.0]), 1), torch.zeros(2))
    # 0.9 is not exact in binary: the mean's roundoff must not be blown up by 1/eps.
    assert torch.equal(group_advantages(torch.full((3,), 0.9), 3), torch.zeros(3))


def test_advantages_non_contiguous_ids():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 2.0]), torch.tensor([5, 7, 5, 7]))
    assert close(adv, [-1.0, 0.0, 1.0, 0.0], 1e-4)
    assert torch.isfinite(adv).all()


def test_advantages_bad_group_size():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)


# --- PPO clip -----------------------------------------------------------------------------


def one_token(ratio, adv, eps_low, eps_high):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(
        lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), eps_low, eps_high
    )
    loss.backward()
    return loss.item(), lp.grad.item(), stats


def test_clip_positive_advantage_above_range_has_zero_grad():
    loss, grad, stats = one_token(1.5, 1.0, 0.2, 0.3)
    assert loss == pytest.approx(-1.3)  # min(1.5, clip(1.5)=1.3) * 1
    assert grad == 0.0
    assert stats["clip_fraction"] == 1.0
    assert stats["ratio"] == pytest.approx(1.5)


def test_negative_advantage_above_range_is_unclipped():
    loss, grad, stats = one_token(1.5, -1.0, 0.2, 0.3)
    assert loss == pytest.approx(1.5)  # min(-1.5, -1.3) = -1.5
    assert grad == pytest.approx(1.5)  # d(-ratio * A)/dlp = -ratio * A
    assert stats["clip_fraction"] == 0.0


def test_asymmetric_clip():
    # 1.25 lies inside [0.8, 1.3]: unclipped with eps_high=0.3 ...
    loss, grad, _ = one_token(1.25, 1.0, 0.2, 0.3)
    assert (loss, grad) == (pytest.approx(-1.25), pytest.approx(-1.25))
    # ... but clipped at 1.2 with the symmetric 0.2.
    loss, grad, _ = one_token(1.25, 1.0, 0.2, 0.2)
    assert (loss, grad) == (pytest.approx(-1.2), 0.0)
    # The lower bound uses eps_low: 0.75 -> 0.8 for a negative advantage.
    loss, grad, stats = one_token(0.75, -1.0, 0.2, 0.3)
    assert (loss, grad) == (pytest.approx(0.8), 0.0)
    assert stats["clip_fraction"] == 1.0


# --- KL -----------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([0.0]), torch.tensor([math.log(2.0)])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(-math.log(2.0))
    assert kl_penalty(lp, ref, KLEstimator.k3).item() == pytest.approx(1 - math.log(2.0))
    assert kl_penalty(ref, ref, "k1").item() == 0.0
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (kl_penalty(a, b, "k3") >= 0).all()


def test_kl_term_in_policy_loss():
    lp = torch.zeros(1, 2)  # ratio 1, advantage 0: only the KL term remains
    ref = torch.full((1, 2), math.log(2.0))
    for est, per_token in [("k1", -math.log(2.0)), (KLEstimator.k3, 1 - math.log(2.0))]:
        loss, stats = policy_loss(
            lp, lp, torch.zeros(1), torch.ones(1, 2), 0.2, 0.2, ref, kl_beta=0.5, kl_estimator=est
        )
        assert loss.item() == pytest.approx(0.5 * per_token)
        assert stats["kl_ref"] == pytest.approx(per_token)
        assert stats["approx_kl"] == 0.0


def test_bad_enum_value_raises():
    with pytest.raises(ValueError):
        policy_loss(
            torch.zeros(1, 1),
            torch.zeros(1, 1),
            torch.zeros(1),
            torch.ones(1, 1),
            0.2,
            aggregation="sum",
        )


# --- aggregation and masking --------------------------------------------------------------


def aggregation_batch():
    # ratio 1 on real tokens, so the per-token loss is -A; padding holds junk that must not count.
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    lp = torch.where(mask.bool(), 0.0, 5.0).requires_grad_()
    ref = torch.where(mask.bool(), 0.0, -7.0)
    return lp, torch.zeros(3, 3), torch.tensor([1.0, -2.0, 100.0]), mask, ref


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("token_mean", (3 * -1.0 + 1 * 2.0) / 4),  # every real token weighs the same
        (LossAggregation.seq_mean, (-1.0 + 2.0) / 2),  # every non-empty sequence weighs the same
    ],
)
def test_aggregation_and_masked_grad(aggregation, expected):
    lp, old, adv, mask, ref = aggregation_batch()
    loss, _ = policy_loss(lp, old, adv, mask, 0.2, 0.2, ref, kl_beta=0.1, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert (lp.grad[mask == 0] == 0).all()
    assert (lp.grad[mask == 1] != 0).all()


def test_all_masked_batch_is_finite_zero():
    for agg in ("token_mean", "seq_mean"):
        loss, stats = policy_loss(
            torch.zeros(2, 2),
            torch.zeros(2, 2),
            torch.ones(2),
            torch.zeros(2, 2),
            0.2,
            aggregation=agg,
        )
        assert loss.item() == 0.0 and all(math.isfinite(v) for v in stats.values())


def test_one_sgd_step_moves_logprobs_with_the_advantage():
    torch.manual_seed(0)
    vocab = 16
    model = nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))
    tokens = torch.tensor([[1, 4, 5, 6], [2, 7, 8, 9]])  # one prompt token, three generated
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])

    def seq_logprobs():
        return token_logprobs(model(tokens[:, :-1]), tokens[:, 1:])

    lp = seq_logprobs()
    before = lp.detach().sum(-1)
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert adv[0] > 0 > adv[1]
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, 0.2, 0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = seq_logprobs().sum(-1)
    assert after[0] > before[0]
    assert after[1] < before[1]


# --- log-probs and SFT --------------------------------------------------------------------


def test_token_logprobs_matches_manual_gather():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    manual = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, labels), manual, atol=1e-6)
    out = token_logprobs(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert torch.allclose(out, manual, atol=0.05)
    labels[0, 0] = -100  # ignore_index must not crash the gather
    assert torch.isfinite(token_logprobs(logits, labels)).all()


def test_nucleus_is_vllms_top_p_and_keeps_the_label():
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from learner.losses import nucleus

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 40, generator=g) * 3
    for p in (0.3, 0.9):
        want = apply_top_k_top_p_pytorch(logits.clone(), None, torch.full((6,), p))
        top = logits.argmax(-1, keepdim=True)  # always in the nucleus
        got = nucleus(logits, top, p)
        assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.isinf(got).any()
        lp = token_logprobs(logits[None], top.T, p)[0]
        assert torch.allclose(lp, torch.log_softmax(want, -1).gather(-1, top)[:, 0], atol=1e-6)
        outside = torch.isinf(want).float().argmax(-1, keepdim=True)  # a token vLLM cut
        assert torch.isfinite(token_logprobs(logits[None], outside.T, p)).all()
    assert torch.equal(nucleus(logits, top, 1.0), logits)
    with pytest.raises(ValueError, match="top_p"):
        nucleus(logits, top, 0.0)


def test_sft_token_loss_is_masked_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=g)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    ref = F.cross_entropy(logits.reshape(-1, 7), labels.masked_fill(mask == 0, -100).reshape(-1))
    assert sft_token_loss(logits, labels, mask).item() == pytest.approx(ref.item(), rel=1e-6)


def test_logprob_mismatch_by_hand():
    a = torch.tensor([[0.0, -1.0, -2.0]])
    b = torch.tensor([[0.5, -1.0, -5.0]])
    assert logprob_mismatch(a, b, torch.tensor([[1, 1, 0]])) == pytest.approx(0.25)


# --- InfoNCE ------------------------------------------------------------------------------


def test_info_nce_by_hand_and_grad_to_query():
    query = torch.tensor([[1.0, 0.0]], requires_grad=True)
    pos = torch.tensor([[2.0, 0.0]])  # cos 1
    neg = torch.tensor([[[0.0, 3.0], [-1.0, 0.0]]])  # cos 0 and -1
    # logits / tau=0.5 are [2, 0, -2]: loss = -log(e^2 / (e^2 + 1 + e^-2))
    expected = math.log(1 + math.exp(-2) + math.exp(-4))
    loss = info_nce(query, pos, neg, tau=0.5)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert query.grad[0, 1] > 0  # turning toward the first negative raises the loss
    assert info_nce(query.detach() * 10, pos, neg, tau=0.5).item() == pytest.approx(expected)
    scores = info_nce_from_scores(torch.tensor([1.0]), torch.tensor([[0.0, -1.0]]), tau=0.5)
    assert scores.item() == pytest.approx(expected)


def test_sft_loss_combines():
    assert sft_loss(torch.tensor(1.0), torch.tensor(2.0), 0.3).item() == pytest.approx(1.6)
    assert sft_loss(torch.tensor(1.0), torch.tensor(2.0), 0.3, torch.tensor(4.0), 0.5).item() \
        == pytest.approx(3.6)


def test_slot_word_loss_sums_the_named_slots_only():
    from learner.losses import IGNORE, slot_word_loss

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    labels = torch.tensor([[0, 1, IGNORE]])
    assert slot_word_loss(logits, labels).item() == pytest.approx(-math.log(0.5) - math.log(0.8))
    assert slot_word_loss(logits, torch.full_like(labels, IGNORE)).item() == 0.0


def test_the_latent_policy_density_is_a_diagonal_gaussian():
    from models.sqr_heads import gaussian_logprob

    g = torch.Generator().manual_seed(0)
    mean, action = torch.randn(3, 8, 5, generator=g), torch.randn(3, 8, 5, generator=g)
    want = torch.distributions.Normal(mean, 0.05).log_prob(action).sum((-1, -2))
    torch.testing.assert_close(gaussian_logprob(action, mean, 0.05), want, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="sigma > 0"):
        gaussian_logprob(action, mean, 0.0)


def test_the_latent_objective_clips_the_density_ratio():
    from learner.losses import latent_policy_loss

    old = torch.zeros(5)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5, 10.0]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0])
    per_row, ratio, clipped = latent_policy_loss(new, old, adv, 0.2)
    # PPO: -min(r A, clip(r) A): A>0 caps the gain at 1.2; A<0 caps the ratio's fall at 0.8;
    # dual clip: a negative advantage costs at most 3 |A| (ratio 10)
    torch.testing.assert_close(per_row, torch.tensor([-1.2, -0.5, 1.1, 0.8, 3.0]))
    torch.testing.assert_close(ratio, torch.tensor([1.5, 0.5, 1.1, 0.5, 10.0]))
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    # its gradient reaches the new log-density only where no bound holds
    new = new.clone().requires_grad_(True)
    latent_policy_loss(new, old, adv, 0.2)[0].sum().backward()
    assert new.grad[[0, 3, 4]].abs().sum() == 0 and (new.grad[[1, 2]] != 0).all()
    # a log-ratio past the bound stays finite
    far = latent_policy_loss(torch.tensor([500.0, -500.0]), torch.zeros(2), torch.tensor([-1.0, 1.0]), 0.2)
    assert torch.isfinite(far[0]).all()


def test_behaviour_weights_correct_only_stale_rows_and_are_capped():
    """Decoupled PPO: pi_old / pi_behaviour on rows an older policy sampled, at most the cap."""
    old = torch.log(torch.tensor([[0.5, 0.2], [0.5, 0.2]]))
    sampled = torch.log(torch.tensor([[0.25, 0.4], [0.1, 0.4]]))
    w = behaviour_weights(old, sampled, torch.tensor([True, False]), cap=1.5)
    assert close(w, [[1.5, 0.5], [1.0, 1.0]])


def test_behaviour_weights_scale_each_tokens_surrogate():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old, adv, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([1.0]), torch.ones(1, 2)
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = policy_loss(lp, old, adv, mask, 0.2, behaviour_weights=weights)
    assert close(loss, -(2.0 + 0.5) / 2)  # ratio 1: each token's -A times its weight
    loss.backward()
    assert close(lp.grad, [[-1.0, -0.25]])
    plain, _ = policy_loss(lp.detach(), old, adv, mask, 0.2)
    same, _ = policy_loss(lp.detach(), old, adv, mask, 0.2, behaviour_weights=torch.ones(1, 2))
    assert torch.equal(plain, same)


def test_refinement_target_error_is_relative_to_the_target():
    from learner.losses import refinement_target_error

    target = torch.zeros(3, 2, 4)
    target[0, 0] = torch.tensor([2.0, 0, 0, 0])  # |t|^2 = 4
    target[1, 1] = torch.tensor([0, 1.0, 1.0, 0])  # |t|^2 = 2
    soft = torch.zeros(3, 2, 4, requires_grad=True)
    with torch.no_grad():
        soft[0, 0, 0] = 1.0  # error 1 of 4
        soft[1] = target[1]  # exact
        soft[2, 0, 0] = 5.0  # a row with no target counts nothing
    err = refinement_target_error(soft, target)
    torch.testing.assert_close(err, torch.tensor([0.25, 0.0, 0.0]))
    assert refinement_target_error(torch.zeros_like(target), target)[:2].tolist() == [1.0, 1.0]
    err.sum().backward()
    assert not soft.grad[2].any() and soft.grad[0, 0, 0] == pytest.approx(2 * (1 - 2) / 4)
