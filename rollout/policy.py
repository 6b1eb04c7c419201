"""The policy as the agent loop sees it: a turn in, a response (and its soft tokens) out.

`LocalPolicy` wires a `PolicyEngine` to the processor, the SQR heads and video
decoding. It is Ray-free; `actors.policy_worker.PolicyWorker` hosts one per actor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from config.schema import Config
from corpus.video import DecodedVideo, decode_video
from models.loading import load_processor, torch_dtype
from models.prompts import prompt_ids, vllm_video_data
from models.sqr_heads import SQRHeads
from models.tokens import NEVER_GENERATED, REFINE_TOKEN, SQR_SLOT_TOKEN
from rollout.engine import PolicyEngine


@dataclass
class GeneratedTurn:
    prompt_ids: list[int]  # expanded, as the engine saw them
    response_ids: list[int]
    logprobs: list[float]
    text: str
    frame_times: list[float]
    weight_version: int
    soft_tokens: np.ndarray | None = None  # [N, D] when the response ended in <REFINE>


class LocalPolicy:
    def __init__(self, cfg: Config, policy_dir: str):
        self.cfg = cfg
        self.processor = load_processor(policy_dir)
        tok = self.processor.tokenizer
        self.refine_id = tok.convert_tokens_to_ids(REFINE_TOKEN)
        self.stop_ids = [self.refine_id, tok.eos_token_id]
        self.banned_ids = tok.convert_tokens_to_ids(NEVER_GENERATED)
        self.heads = SQRHeads.load(policy_dir, torch_dtype(cfg.model.dtype)).eval()
        self.engine = PolicyEngine(
            policy_dir, cfg.rollout, slot_token_id=tok.convert_tokens_to_ids(SQR_SLOT_TOKEN),
            num_slots=cfg.sqr.num_tokens, dtype=cfg.model.dtype, seed=cfg.model.seed,
        )
        self.weight_version = 0

    def _decode(self, path: str) -> DecodedVideo:
        return decode_video(path, self.cfg.video)

    def sampling_params(self, seed: int | None, greedy: bool):
        return self.engine.sampling_params(self.cfg.rollout.sampling, self.stop_ids, seed=seed,
                                           greedy=greedy, banned_token_ids=self.banned_ids,
                                           capture_after=self.refine_id)

    async def generate(self, query: str, video_path: str, seed: int | None = None,
                       greedy: bool = False) -> GeneratedTurn:
        """One turn; a response that ends in <REFINE> also brings its soft tokens, from the
        slots the same request goes on to write (rollout.slot_forcing)."""
        video = self._decode(video_path)
        params = self.sampling_params(seed, greedy)
        version = self.weight_version
        out = await self.engine.generate(prompt_ids(self.processor, query),
                                         vllm_video_data(video), params)
        soft = None
        if out.slot_states is not None:
            with torch.no_grad():
                soft = self.heads.soft_tokens(
                    torch.from_numpy(out.slot_states).to(self.heads_dtype)).float().numpy()
        return GeneratedTurn(out.prompt_ids, out.response_ids, out.logprobs, out.text,
                             video.timestamps.tolist(), version, soft)

    @property
    def heads_dtype(self) -> torch.dtype:
        return next(self.heads.parameters()).dtype

    async def load_weights(self, version: int, model_state: dict[str, torch.Tensor],
                           heads_state: dict[str, torch.Tensor] | None = None) -> float:
        seconds = await self.engine.load_weights(model_state.items())
        self._now_at(version, heads_state)
        return seconds

    async def finish_weight_update(self, version: int,
                                   heads_state: dict[str, torch.Tensor] | None = None) -> None:
        """The end of a broadcast round: the engine holds the new tensors; the heads (not part
        of the vLLM model) come beside them."""
        await self.engine.finish_weight_update()
        self._now_at(version, heads_state)

    def _now_at(self, version: int, heads_state: dict[str, torch.Tensor] | None) -> None:
        """The engine holds `version`; the heads (not part of the vLLM model) follow it."""
        if heads_state is not None:
            self.heads.load_state_dict(heads_state)
        self.weight_version = version

    def shutdown(self) -> None:
        self.engine.shutdown()
