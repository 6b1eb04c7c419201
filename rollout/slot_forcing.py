"""The SQR slots inside the turn's own request: once a response writes `<REFINE>`, vLLM is made
to write the N slot tokens and then an end token. Each slot is fed back in at the next decode
step, where the capture hook (rollout.soft_capture) keeps its final hidden state; so the soft
tokens come out of decode steps the batch runs anyway: no second request, no second video
intake, no scheduler round trip.

The natural budget stays `cap` tokens (the configured max_tokens): at the cap, a response that
has not written the trigger is ended with the end token, which the engine strips again (the
request's own max_tokens is cap + N + 1, room for the forced tail). A vLLM logits processor,
loaded by name in the engine (`logits_processors`); per request it acts only when the request's
SamplingParams carry `extra_args[SLOTS_ARG]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

SLOTS_ARG = "sqr_slots"


@dataclass(frozen=True)
class SlotSpec:
    trigger: int  # <REFINE>
    slot: int  # <|sqr_slot|>
    n: int  # slots to write after the trigger
    end: int  # written after the last slot (a stop token)
    cap: int  # the natural budget of response tokens
    # written when the budget is spent without the trigger: the end token (the request ends
    # as its length limit would have ended it), or the trigger (`trigger_at_cap`)
    at_cap: int | None = None

    def as_arg(self) -> dict:
        return asdict(self)


def forced_token(output: list[int], spec: SlotSpec) -> int | None:
    """The token the request must write next, or None to let it sample."""
    tail = output[-(spec.n + 1):]
    if spec.trigger in tail:
        written = len(tail) - 1 - tail.index(spec.trigger)  # slots after the trigger so far
        return spec.slot if written < spec.n else spec.end
    if len(output) >= spec.cap:
        return spec.end if spec.at_cap is None else spec.at_cap
    return None


def trigger_at_cap(params):
    """Capturing SamplingParams whose response, at its budget, writes the trigger and then the
    slots instead of ending: the slot tail after a response of known length, for the rollout
    benchmark and for tests on random weights (which rarely write the trigger themselves)."""
    spec = params.extra_args[SLOTS_ARG]
    spec["at_cap"] = spec["trigger"]
    params.max_tokens += 1  # the trigger is written beyond the natural budget
    return params


class SlotForcing(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.requests: dict[int, tuple[SlotSpec, list[int]]] = {}  # batch index -> spec, output

    @classmethod
    def validate_params(cls, params) -> None:
        arg = (params.extra_args or {}).get(SLOTS_ARG)
        if arg is not None:
            SlotSpec(**arg)  # a malformed spec fails at submission, not inside a step

    def is_argmax_invariant(self) -> bool:
        return False  # it overrides the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._entry)

    @staticmethod
    def _entry(params, _prompt, output: list[int]) -> tuple[SlotSpec, list[int]] | None:
        arg = (params.extra_args or {}).get(SLOTS_ARG)
        return None if arg is None else (SlotSpec(**arg), output)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (spec, output) in self.requests.items():
            token = forced_token(output, spec)
            if token is not None:
                logits[index] = float("-inf")
                logits[index, token] = 0.0
        return logits
