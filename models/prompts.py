"""The verification prompt and the model inputs built from it.

One place builds the turn prompt for both sides: vLLM gets the *unexpanded* prompt ids
(one <|video_pad|>, which vLLM expands itself; ids it already expanded would be
expanded again) plus the frames with their metadata, and the learner gets the same
frames through the processor. Frame timestamps go in as metadata, so Qwen3-VL's
`<t seconds>` markers in the prompt are the real times of the sampled frames.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

from corpus.video import DecodedVideo

INSTRUCTION = (
    "Query: {query}\n"
    "Does this video contain the moment the query describes? Reason inside "
    "<think></think>, then answer <answer>matched</answer> or <answer>not_matched</answer>. "
    "If matched, give the moment as <start>S</start> <end>E</end> in seconds. "
    "Always end with <REFINE>."
)
# The tiny policy's caption pretraining (tiny.policy_pretrain) asks this.
CAPTION_PROMPT = "Describe every moment of the video with its start and end in seconds."


def verification_messages(query: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": INSTRUCTION.format(query=query)},
    ]}]


def prompt_ids(processor, query: str) -> list[int]:
    """Unexpanded prompt token ids of a verification turn."""
    text = processor.apply_chat_template(verification_messages(query),
                                         add_generation_prompt=True, tokenize=False)
    return processor.tokenizer(text, add_special_tokens=False).input_ids


def _frames_and_metadata(video: DecodedVideo) -> tuple[np.ndarray, dict]:
    frames = video.frames
    if len(frames) < 2:  # Qwen3-VL's temporal patch needs two frames
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    times = np.resize(video.timestamps, len(frames))
    fps = video.source_fps
    meta = dict(total_num_frames=int(round(video.duration_s * fps)), fps=fps,
                frames_indices=[int(round(t * fps)) for t in times],
                duration=video.duration_s, video_backend="decord",
                height=int(frames.shape[1]), width=int(frames.shape[2]))
    return frames, meta


def vllm_video_data(video: DecodedVideo) -> dict:
    frames, meta = _frames_and_metadata(video)
    return {"video": (frames, {**meta, "do_sample_frames": False})}


def hf_video_inputs(processor, video: DecodedVideo) -> dict[str, torch.Tensor]:
    """pixel_values_videos and video_grid_thw for the transformers policy."""
    frames, meta = _frames_and_metadata(video)
    out = processor.video_processor(videos=[frames], video_metadata=[VideoMetadata(**meta)],
                                    do_sample_frames=False, return_tensors="pt")
    return {"pixel_values_videos": out["pixel_values_videos"],
            "video_grid_thw": out["video_grid_thw"]}


def hf_turn_inputs(processor, query: str, video: DecodedVideo) -> dict[str, torch.Tensor]:
    """A whole verification prompt for transformers, placeholders expanded."""
    return hf_prompt_inputs(processor, verification_messages(query), video)


def hf_prompt_inputs(processor, messages: list[dict], video: DecodedVideo) -> dict[str, torch.Tensor]:
    frames, meta = _frames_and_metadata(video)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], videos=[frames], video_metadata=[VideoMetadata(**meta)],
                          do_sample_frames=False, return_tensors="pt"))


def mm_token_type_ids(processor, ids: list[int]) -> torch.Tensor:
    return torch.tensor(processor.create_mm_token_type_ids([ids]))
