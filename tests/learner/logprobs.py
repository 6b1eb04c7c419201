"""Reading response log-probs back with transformers, the reference the learner is checked
against."""

from __future__ import annotations

import torch

from corpus.video import decode_video
from models.prompts import hf_video_inputs, mm_token_type_ids
from rollout.trajectory import Turn


def response_logprobs(model, turns: list[Turn], processor, cfg) -> list[torch.Tensor]:
    """Per-token log-probs of each turn's response under a transformers model, one at a time."""
    out = []
    v = cfg.video
    with torch.no_grad():
        for t in turns:
            ids = t.prompt_ids + t.response_ids
            video = decode_video(t.video_path, v)
            logits = model(input_ids=torch.tensor([ids]), mm_token_type_ids=mm_token_type_ids(processor, ids),
                           **hf_video_inputs(processor, video)).logits[0, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            out.append(lp[len(t.prompt_ids) - 1:])
    return out
