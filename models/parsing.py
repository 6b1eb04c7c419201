"""Parse the policy's turn output into fields and format flags.

The policy writes ``<think>…</think> <answer>matched|not_matched</answer>``, then, only when
matched, ``<start>S</start> <end>E</end>`` in seconds, and always ends with ``<REFINE>``.
Sampled text is arbitrary, so ``parse_response`` never raises: anything it cannot read
becomes ``None`` plus a false flag, and the rewards decide what that costs. The first
complete occurrence of each tag wins, so a model cannot game the parse by repeating tags.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Answer = Literal["matched", "not_matched"]
ANSWERS: tuple[str, ...] = ("matched", "not_matched")
REFINE = "<REFINE>"

_TIME_TAG = re.compile(r"</?(?:start|end)>")
# Only plain ASCII decimals: "nan", "inf", hex, "1_0" and non-ASCII digits are not times.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What may follow <REFINE>: whitespace and chat special tokens the engine may leave in.
_TRAILER = re.compile(r"(?:\s|<\|[^<>|]{0,64}\|>|</s>|<eos>|<pad>)*")


@dataclass(frozen=True)
class ParsedResponse:
    think: str | None = None
    answer: Answer | None = None
    start: float | None = None
    end: float | None = None
    has_refine: bool = False
    think_ok: bool = False
    answer_ok: bool = False
    times_ok: bool = False
    refine_ok: bool = False

    @property
    def well_formed(self) -> bool:
        return self.think_ok and self.answer_ok and self.times_ok and self.refine_ok

    @property
    def matched(self) -> bool:
        return self.answer == "matched"


def _first(tag: str, text: str) -> str | None:
    """The text between the first <tag> and the first </tag> after it. Two finds, linear in
    the text: a lazy regex retried the scan from every unclosed <tag> (quadratic)."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    i = text.find(opening)
    if i < 0:
        return None
    j = text.find(closing, i + len(opening))
    return None if j < 0 else text[i + len(opening): j]


def _time(raw: str | None) -> float | None:
    """A finite number, or None: huge values that overflow to inf are as unusable as text."""
    if raw is None or not _NUMBER.fullmatch(raw.strip()):
        return None
    value = float(raw.strip())
    return value if math.isfinite(value) else None


def parse_response(text: object) -> ParsedResponse:
    """Parse one turn's output; a matched span also needs start >= 0, since times are offsets."""
    if not isinstance(text, str):
        return ParsedResponse()
    think = _first("think", text)
    raw_answer = _first("answer", text)
    answer = raw_answer.strip() if raw_answer is not None else None
    answer = answer if answer in ANSWERS else None
    start, end = _time(_first("start", text)), _time(_first("end", text))
    if answer == "matched":
        times_ok = start is not None and end is not None and 0 <= start <= end
    else:
        # A not_matched answer claims no moment, so any time tag contradicts it.
        times_ok = answer == "not_matched" and _TIME_TAG.search(text) is None
    last = text.rfind(REFINE)
    return ParsedResponse(
        think=think,
        answer=answer,  # type: ignore[arg-type]
        start=start,
        end=end,
        has_refine=last >= 0,
        think_ok=think is not None and think.strip() != "",
        answer_ok=answer is not None,
        times_ok=times_ok,
        refine_ok=last >= 0 and _TRAILER.fullmatch(text, last + len(REFINE)) is not None,
    )


def format_response(
    answer: str, think: str, start: float | None = None, end: float | None = None
) -> str:
    """The canonical output, used as SFT target; rejects inputs that would not parse back."""
    if answer not in ANSWERS:
        raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
    if not think.strip() or re.search(r"</?(?:think|answer|start|end)>|<REFINE>", think):
        raise ValueError("think must be non-empty and free of response tags")
    parts = [f"<think>{think}</think>", f"<answer>{answer}</answer>"]
    if answer == "matched":
        if start is None or end is None:
            raise ValueError("a matched answer needs start and end")
        s, e = float(start), float(end)
        if not (math.isfinite(s) and math.isfinite(e) and 0 <= s <= e):
            raise ValueError(f"invalid span ({start}, {end})")
        parts += [f"<start>{s!r}</start>", f"<end>{e!r}</end>"]
    elif start is not None or end is not None:
        raise ValueError("a not_matched answer has no span")
    parts.append(REFINE)
    return " ".join(parts)
