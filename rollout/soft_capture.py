"""Soft query tokens captured inside the vLLM engine.

A vLLM worker extension (mixed into the worker by `worker_extension_cls`, reached via
`collective_rpc`). It installs one forward hook on the model the runner calls (its
output is the final-norm hidden states). That module runs eagerly around the backbone
vLLM compiles: a hook on the final norm, or on the backbone, whose `__call__` vLLM
replaces, is compiled away and never fires. On every step it walks the persistent
batch (`input_batch.req_ids` with `query_start_loc`), finds the SQR slot tokens scheduled
for each request (one per decode step when the turn's own request writes them, see
rollout.slot_forcing), keeps their final hidden states by absolute position, and once a
request has N of them files the N states under its id. This is what maps hidden states to
the right request under continuous batching: the batch layout, not arrival order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

_MAX_PENDING = 4096  # states of requests nobody collected (aborted) are dropped past this


class SoftTokenCapture:
    """Methods here become methods of the vLLM worker (self.model_runner is the runner)."""

    def install_soft_capture(self, slot_token_id: int, num_slots: int) -> bool:
        self._slot_id = int(slot_token_id)
        self._num_slots = int(num_slots)
        self._slot_states: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._partial: dict[str, dict[int, torch.Tensor]] = {}  # request -> position -> state
        model = self.model_runner.get_model()
        if getattr(self, "_soft_hook", None) is not None:
            self._soft_hook.remove()
        self._soft_hook = model.register_forward_hook(self._capture_slots)
        return True

    def _capture_slots(self, _module, _inputs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        runner, n = self.model_runner, self._num_slots
        batch = runner.input_batch
        starts = runner.query_start_loc.np
        token_ids = runner.input_ids.np
        for i, req_id in enumerate(batch.req_ids):
            start, end = int(starts[i]), int(starts[i + 1])
            slots = (token_ids[start:end] == self._slot_id).nonzero()[0]
            if not len(slots):
                continue
            # by absolute position: a slot run may span decode steps (one slot each, the
            # turn's own request) or arrive in one prefill; a recomputed position overwrites
            done = int(batch.num_computed_tokens_cpu[i])
            partial = self._partial.setdefault(req_id, {})
            for j in slots:
                partial[done + int(j)] = hidden[start + int(j)].detach().float().cpu().clone()
            if len(partial) >= n:
                states = [partial[p] for p in sorted(partial)[-n:]]
                self._slot_states[req_id] = torch.stack(states)
                del self._partial[req_id]
            while len(self._slot_states) > _MAX_PENDING:
                self._slot_states.popitem(last=False)
            while len(self._partial) > _MAX_PENDING:
                self._partial.pop(next(iter(self._partial)))

    def pop_slot_states(self, request_ids: list[str]) -> dict[str, list[list[float]]]:
        """States for the given external request ids (vLLM appends '-<suffix>' inside),
        as nested lists: they cross the engine's process boundary as msgpack."""
        wanted = set(request_ids)
        found = {}
        for internal in list(self._slot_states):
            external = internal.rsplit("-", 1)[0]
            key = internal if internal in wanted else external
            if key in wanted:
                found[key] = self._slot_states.pop(internal).tolist()
        return found
