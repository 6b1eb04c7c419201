"""The slot tail a capturing request is made to write, and how the engine strips it again."""

from __future__ import annotations

import pytest

from rollout.engine import _forced_tail
from rollout.slot_forcing import SlotSpec, forced_token

SPEC = SlotSpec(trigger=7, slot=9, n=3, end=2, cap=5)  # <REFINE> 7, slot 9, EOS 2


@pytest.mark.parametrize(("output", "want"), [
    ([], None), ([4, 5], None),  # sampling as usual
    ([4, 7], 9), ([4, 7, 9], 9), ([4, 7, 9, 9], 9),  # the slots after the trigger
    ([4, 7, 9, 9, 9], 2),  # then the end token
    ([1, 2, 3, 4, 5], 2),  # the budget spent without the trigger: end as the length limit would
    ([1, 2, 3, 4, 7], 9),  # the trigger as the last natural token still gets its slots
])
def test_forced_token(output, want):
    assert forced_token(output, SPEC) == want


def test_at_cap_writes_the_trigger_for_the_benchmark():
    spec = SlotSpec(7, 9, 3, 2, cap=2, at_cap=7)
    assert forced_token([4, 5], spec) == 7 and forced_token([4, 5, 7], spec) == 9


def test_the_forced_tail_is_stripped_from_the_response():
    lp = [-0.5, -0.6, -0.7, 0.0, 0.0, 0.0, 0.0]
    assert _forced_tail([4, 5, 7, 9, 9, 9, 2], lp, "stop", SPEC) == (
        [4, 5, 7], [-0.5, -0.6, -0.7], "stop", True)
    assert _forced_tail([4, 5, 7, 9], lp[:4], "length", SPEC)[3] is False  # tail cut short
    assert _forced_tail([1, 2, 3, 4, 5, 2], lp[:6], "stop", SPEC) == (
        [1, 2, 3, 4, 5], lp[:5], "length", False)  # the end forced at the cap
    assert _forced_tail([4, 2], lp[:2], "stop", SPEC) == ([4, 2], lp[:2], "stop", False)
