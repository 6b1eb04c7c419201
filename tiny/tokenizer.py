"""A byte-level BPE tokenizer trained locally with Qwen3-VL's special tokens.

The hub is unreachable, so the tiny models get a tokenizer of their own. It keeps the
real one's special-token strings, pre-tokenizer (digits split one by one) and chat
format, so that prompt building and parsing code is the same for tiny and real models.
"""

from __future__ import annotations

import itertools

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from config.schema import ModelConfig
from corpus.synth import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, describe
from learner.sft_data import reasoning, template_words
from models.parsing import format_response
from models.prompts import CAPTION_PROMPT, INSTRUCTION
from models.tokens import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS, REFINE_TOKEN, SQR_SLOT_TOKEN

# Qwen2's pre-tokenizer regex (single digits, words with a leading non-letter).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item['type'] == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _training_text() -> list[str]:
    """What the system writes and reads: the synthetic corpus's queries, the captions, checks
    and verdicts of the SFT traces, the prompts, frame timestamps and answer tags. Every word of it
    ends up one token (the corpus's words are few), so traces are short and the loss falls on
    words that carry meaning."""
    queries = [describe(*x) for x in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)]
    spans = [(s, s + d) for s in range(12) for d in range(2, 7)]
    skip = template_words(queries)
    lines = [reasoning(d, [(d, s, e)], "matched", skip, s, e)
             for d, (s, e) in zip(queries, itertools.cycle(spans))]
    lines += [reasoning(d, [(w, s, e)], "not_matched", skip)
              for d, w, (s, e) in zip(queries[::7], queries[::-5], itertools.cycle(spans))]
    lines += [format_response("matched", "x", s, e) + " " + REFINE_TOKEN for s, e in spans]
    lines += [format_response("not_matched", "x") + " " + REFINE_TOKEN]
    lines += [INSTRUCTION.format(query=d) for d in queries[::11]]
    lines += [CAPTION_PROMPT] * 50
    lines += [f"<{t / 10:.1f} seconds>" for t in range(0, 3000, 7)]
    lines += [f"{ModelConfig.embed_instruction} system user assistant"] * 20
    return lines


def train_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    # As in Qwen3, <think> tags are atomic but not special, so decoded text keeps them;
    # <REFINE> likewise, because the parser reads it. The slot token is never shown.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    tok.add_tokens([AddedToken(REFINE_TOKEN, special=False, normalized=False)])
    tok.add_special_tokens([AddedToken(SQR_SLOT_TOKEN, special=True, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:] + [SQR_SLOT_TOKEN],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
