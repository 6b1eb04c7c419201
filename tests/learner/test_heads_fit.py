import pytest
import torch

from learner.heads_fit import fit_heads, target_error
from models.sqr_heads import SQRHeadsConfig

CFG = SQRHeadsConfig(policy_hidden=16, soft_dim=16, embedder_hidden=12, num_tokens=4)


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, 4, 16, generator=g)
    targets = states @ (0.3 * torch.randn(16, 12, generator=torch.Generator().manual_seed(9)))
    return states, targets


def test_the_fit_learns_a_map_that_holds_on_unseen_turns():
    states, targets = _data(64)
    val = _data(32, seed=1)
    heads, report = fit_heads(CFG, states, targets, 300, 3e-3, 16, 0, val)
    # fresh heads emit zeros (the append projector's zero start): relative error exactly 1
    assert report["train_error"][0] == report["val_error"][0] == pytest.approx(1.0)
    assert report["train_error"][1] < 0.3 and report["val_error"][1] < 0.5, report
    assert report["val_error"][1] == pytest.approx(target_error(heads, *val))
    assert report["steps"] == 300


def test_the_fit_is_seeded_and_needs_turns():
    states, targets = _data(16)
    a, report = fit_heads(CFG, states, targets, 20, 1e-3, 8, 3)
    b, _ = fit_heads(CFG, states, targets, 20, 1e-3, 8, 3)
    assert "val_error" not in report
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="not-matched turn"):
        fit_heads(CFG, states[:0], targets[:0], 20, 1e-3, 8, 3)


def test_the_fitted_heads_read_raw_states_though_they_fit_standardised_ones():
    """Features of very different scales (as in final hidden states) fit as well as unit ones:
    the first layer absorbs the standardisation, so applying the heads to the raw states gives
    the error the fit reports."""
    states, targets = _data(64)
    scale = torch.logspace(-2, 2, 16)
    heads, report = fit_heads(CFG, states * scale + 5.0, targets, 300, 3e-3, 16, 0)
    assert report["train_error"][1] < 0.3
    assert target_error(heads, states * scale + 5.0, targets) == pytest.approx(
        report["train_error"][1], rel=1e-4)
