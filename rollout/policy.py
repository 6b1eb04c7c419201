"""The policy as the agent loop sees it: a turn in, a response (and soft tokens) out.

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


class LocalPolicy:
    def __init__(self, cfg: Config, policy_dir: str):
        self.cfg = cfg
        self.processor = load_processor(policy_dir)
        tok = self.processor.tokenizer
        self.stop_ids = [tok.convert_tokens_to_ids(REFINE_TOKEN), tok.eos_token_id]
        self.banned_ids = tok.convert_tokens_to_ids(NEVER_GENERATED)
        self.heads = SQRHeads.load(policy_dir, torch_dtype(cfg.model.dtype)).eval()
        self.engine = PolicyEngine(
            policy_dir, cfg.rollout, slot_token_id=tok.convert_tokens_to_ids(SQR_SLOT_TOKEN),
            num_slots=cfg.sqr.num_tokens, dtype=cfg.model.dtype, seed=cfg.model.seed,
        )
        self.weight_version = 0

    def _decode(self, path: str) -> DecodedVideo:
        return decode_video(path, self.cfg.video)

    async def generate(self, query: str, video_path: str, seed: int | None = None,
                       greedy: bool = False) -> GeneratedTurn:
        video = self._decode(video_path)
        params = self.engine.sampling_params(self.cfg.rollout.sampling, self.stop_ids,
                                             seed=seed, greedy=greedy,
                                             banned_token_ids=self.banned_ids)
        version = self.weight_version
        out = await self.engine.generate(prompt_ids(self.processor, query),
                                         vllm_video_data(video), params)
        return GeneratedTurn(out.prompt_ids, out.response_ids, out.logprobs, out.text,
                             video.timestamps.tolist(), version)

    async def soft_tokens(self, query: str, response_ids: list[int], video_path: str) -> np.ndarray:
        """[N, D] soft query tokens for a turn that ended in <REFINE>."""
        video = self._decode(video_path)
        ids = prompt_ids(self.processor, query) + list(response_ids)
        hidden = await self.engine.slot_hidden_states(ids, vllm_video_data(video))
        with torch.no_grad():
            soft = self.heads.soft_tokens(torch.from_numpy(hidden).to(self.heads_dtype))
        return soft.float().numpy()

    @property
    def heads_dtype(self) -> torch.dtype:
        return next(self.heads.parameters()).dtype

    async def load_weights(self, version: int, model_state: dict[str, torch.Tensor],
                           heads_state: dict[str, torch.Tensor] | None = None) -> float:
        seconds = await self.engine.load_weights(model_state.items())
        if heads_state is not None:
            self.heads.load_state_dict(heads_state)
        self.weight_version = version
        return seconds

    def shutdown(self) -> None:
        self.engine.shutdown()
