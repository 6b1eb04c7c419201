"""The search engine's encoder: Qwen3-VL-Embedding (or the tiny model of its architecture).

Both sides use the released model's recipe: the instruction as the system message, the
input as the user message, the generation prompt, the final hidden state of the last
non-pad token, L2-normalised. Queries may carry SQR soft tokens: N `<|sqr_slot|>`
placeholders follow the query text and their input embeddings are replaced by the
append projector's output, so that the frozen embedder stays differentiable with
respect to the soft tokens (the learner backpropagates InfoNCE through it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.video_utils import VideoMetadata

from config.schema import VideoConfig
from corpus.video import DecodedVideo, decode_video
from models.loading import load_embedder, load_processor, torch_dtype
from models.sqr_heads import SQRHeads
from models.tokens import SQR_SLOT_TOKEN


def _messages(instruction: str, content: dict) -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction}]},
        {"role": "user", "content": [content]},
    ]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last attended position, whichever side the padding is on."""
    last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Text positions counted over real tokens only, so padding never shifts them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def video_metadata(video: DecodedVideo) -> VideoMetadata:
    """The processor writes `<t seconds>` before each frame pair from frame index / fps."""
    indices = np.floor(video.timestamps * video.source_fps + 0.5).astype(np.int64)
    return VideoMetadata(
        total_num_frames=round(video.duration_s * video.source_fps), fps=video.source_fps,
        height=video.frames.shape[1], width=video.frames.shape[2], duration=video.duration_s,
        frames_indices=indices.tolist(),
    )


def model_id(embedder_dir: str | Path, instruction: str, video: VideoConfig) -> str:
    """Names the vector space: weights + config + instruction + frame sampling."""
    embedder_dir = Path(embedder_dir)
    h = hashlib.sha256(json.dumps([instruction, asdict(video)]).encode())
    for path in sorted(embedder_dir.glob("*.json")) + sorted(embedder_dir.glob("*.safetensors")):
        h.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return f"{embedder_dir.name}-{h.hexdigest()[:12]}"


class Embedder:
    """Frozen embedder plus (optionally) the SQR append projector from the policy directory."""

    def __init__(self, model_dir: str | Path, policy_dir: str | Path | None = None,
                 dtype: str = "float32", instruction: str = "Represent the user's input.",
                 video: VideoConfig | None = None, device: str | None = None,
                 refine_scale: float = 1.0):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.instruction = instruction
        self.video = video or VideoConfig()
        self.refine_scale = refine_scale  # sqr.refine_scale: the step along what soft tokens change
        self.processor = load_processor(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.model = load_embedder(model_dir, dtype).to(self.device).eval().requires_grad_(False)
        self.dim = self.model.config.text_config.hidden_size
        # The released embedder's tokenizer has no slot token; any id works, its embedding
        # is always overwritten, but it must index a row of the embedding table.
        if SQR_SLOT_TOKEN not in self.tokenizer.get_vocab():
            self.tokenizer.add_tokens([SQR_SLOT_TOKEN], special_tokens=True)
        self.slot_id = self.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN)
        if self.slot_id >= self.model.get_input_embeddings().num_embeddings:
            raise ValueError(f"{SQR_SLOT_TOKEN} id {self.slot_id} is outside the embedding table")
        self.heads = None
        if policy_dir is not None:
            self.heads = SQRHeads.load(policy_dir, torch_dtype(dtype))
            self.heads.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, model_dir: str | Path, policy_dir: str | Path | None = None,
                    **overrides) -> Embedder:
        """The embedder as a Config sets it up (dtype, instruction, video sampling, the
        refinement's step), so that a new key is one edit here; `overrides` for a caller that
        differs (a GPU benchmark's dtype and device)."""
        kwargs = dict(dtype=cfg.model.dtype, instruction=cfg.model.embed_instruction,
                      video=cfg.video, refine_scale=cfg.sqr.refine_scale) | overrides
        return cls(model_dir, policy_dir, **kwargs)

    def decode(self, path: str | Path) -> DecodedVideo:
        """A video sampled the way this embedder's index is built (the video config)."""
        return decode_video(path, self.video)

    def load_heads(self, state: dict[str, torch.Tensor]) -> None:
        """New SQR head weights from the learner (its refine projector rides along unused)."""
        if self.heads is None:
            raise ValueError("this embedder was loaded without SQR heads (no policy_dir)")
        self.heads.load_state_dict(state)

    @property
    def soft_shape(self) -> tuple[int, int] | None:
        """(N, D) expected of one query's soft tokens, None without SQR heads."""
        return None if self.heads is None else (self.heads.cfg.num_tokens, self.heads.cfg.soft_dim)

    def _normalise(self, out, mask: torch.Tensor) -> torch.Tensor:
        pooled = last_token_pool(out.last_hidden_state, mask).float()
        return nn.functional.normalize(pooled, dim=-1)

    @torch.inference_mode()
    def encode_videos(self, videos: list[DecodedVideo]) -> np.ndarray:
        """float32 [B, D_emb]; frames come already sampled and sized by corpus.video."""
        if not videos:
            return np.zeros((0, self.dim), np.float32)
        return self.video_vectors(videos).cpu().numpy()

    def video_vectors(self, videos: list[DecodedVideo]) -> torch.Tensor:
        """[B, D_emb] float32, differentiable w.r.t. the embedder (pretraining uses it)."""
        prompt = self.processor.apply_chat_template(
            _messages(self.instruction, {"type": "video"}), tokenize=False,
            add_generation_prompt=True)
        inputs = self.processor(
            text=[prompt] * len(videos), videos=[v.frames for v in videos],
            video_metadata=[video_metadata(v) for v in videos], do_resize=False,
            padding=True, return_tensors="pt").to(self.device)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        out = self.model(**inputs)
        return self._normalise(out, inputs["attention_mask"])

    def tokenize_queries(self, texts: list[str], num_slots: int) -> dict[str, torch.Tensor]:
        """Chat-formatted query ids with `num_slots` slot tokens right after each text."""
        for text in texts:
            if SQR_SLOT_TOKEN in text:
                raise ValueError(f"query text may not contain {SQR_SLOT_TOKEN}: {text!r}")
        prompts = [
            self.processor.apply_chat_template(
                _messages(self.instruction, {"type": "text", "text": t + SQR_SLOT_TOKEN * num_slots}),
                tokenize=False, add_generation_prompt=True)
            for t in texts
        ]
        return self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)

    def encode_queries(self, texts: list[str], soft_tokens: torch.Tensor | None = None,
                       projector: nn.Module | None = None) -> torch.Tensor:
        """[B, D_emb] float32; differentiable w.r.t. soft_tokens [B, N, D] (no_grad is the caller's).

        With soft tokens, the refined vector is the plain query's plus what the soft tokens
        change, scaled: normalise(q(text) + s * (q(text, soft) - q(text, 0))), s =
        `refine_scale`, where q(text, 0) has zero
        input embeddings at the slots. Zero soft inputs (the append projector's start) thus
        search exactly as the text does, whatever the embedder makes of extra positions (an
        embedder never trained with them turns the text plus 8 zero slots into a near-random
        query).
        `projector` replaces the loaded append projector, so that the learner can pass the
        one it trains and its gradients flow too.
        """
        if soft_tokens is None:
            return self._encode_text(texts)
        if soft_tokens.ndim != 3 or soft_tokens.shape[0] != len(texts):
            raise ValueError(f"soft_tokens must be [B={len(texts)}, N, D], got "
                             f"{tuple(soft_tokens.shape)}")
        projector = projector or (self.heads.append_projector if self.heads else None)
        if projector is None:
            raise ValueError("soft tokens need SQR heads: pass policy_dir or a projector")
        batch = self.tokenize_queries(texts, soft_tokens.shape[1])
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        soft = projector(soft_tokens.to(self.device, embeds.dtype)).to(embeds.dtype)
        slots = (batch["input_ids"] == self.slot_id).unsqueeze(-1).expand_as(embeds)
        with_soft = embeds.masked_scatter(slots, soft)
        with_zero = embeds.masked_fill(slots, 0.0)
        mask = batch["attention_mask"].repeat(2, 1)
        out = self.model(inputs_embeds=torch.cat([with_soft, with_zero]), attention_mask=mask,
                         position_ids=positions(mask))
        refined, baseline = self._normalise(out, mask).chunk(2)
        # (text + s*refined) - s*baseline: at s = 1 the very floats of the unscaled read-out
        s = self.refine_scale
        return nn.functional.normalize(self._encode_text(texts) + s * refined - s * baseline, dim=-1)

    def word_inputs(self, words: list[tuple[str, ...]], num_slots: int) -> torch.Tensor:
        """[B, N, D_emb] float32: each row's words as the embedder reads them mid-sentence (the
        input embeddings of " word"'s tokens, in order), cut to N slots, zeros after: where a
        refinement that names these words would put the slot inputs."""
        table = self.model.get_input_embeddings().weight
        out = torch.zeros(len(words), num_slots, table.shape[1], device=table.device)
        for i, row in enumerate(words):
            ids = [t for w in row for t in self.tokenizer(" " + w, add_special_tokens=False).input_ids]
            if ids:
                ids = torch.tensor(ids[:num_slots], device=table.device)
                out[i, :len(ids)] = table[ids].detach().float()
        return out

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize_queries(texts, 0)
        mask = batch["attention_mask"]
        out = self.model(input_ids=batch["input_ids"], attention_mask=mask,
                         position_ids=positions(mask))
        return self._normalise(out, mask)
