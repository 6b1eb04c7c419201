import math
import random

import pytest

from models.parsing import ParsedResponse, format_response, parse_response

GOOD_MATCHED = (
    "<think>the cat jumps</think> <answer>matched</answer> <start>3.5</start> <end>7</end> <REFINE>"
)
GOOD_NOT = "<think>no cat here</think> <answer>not_matched</answer> <REFINE>"


def test_well_formed_matched():
    p = parse_response(GOOD_MATCHED)
    assert (p.think, p.answer, p.start, p.end) == ("the cat jumps", "matched", 3.5, 7.0)
    assert p.has_refine and p.well_formed and p.matched


def test_well_formed_not_matched():
    p = parse_response(GOOD_NOT)
    assert p.answer == "not_matched" and p.start is None and p.end is None
    assert p.well_formed and not p.matched


@pytest.mark.parametrize("bad", [None, 123, b"<answer>matched</answer>", ["x"], 1.5])
def test_non_str_is_empty_parse(bad):
    assert parse_response(bad) == ParsedResponse()
    assert not parse_response(bad).well_formed


@pytest.mark.parametrize(
    "trailer, ok",
    [
        ("", True),
        ("  \n", True),
        ("<|im_end|>", True),
        ("<|im_end|>\n<|endoftext|>", True),
        ("</s>", True),
        (" more text", False),
        ("<REFINE>x", False),
    ],
)
def test_refine_trailer(trailer, ok):
    p = parse_response(GOOD_NOT + trailer)
    assert p.has_refine and p.refine_ok is ok and p.well_formed is ok


def test_refine_missing_or_early():
    assert not parse_response(GOOD_NOT.replace("<REFINE>", "")).has_refine
    early = "<REFINE> <think>a</think> <answer>not_matched</answer>"
    p = parse_response(early)
    assert p.has_refine and not p.refine_ok and not p.well_formed


@pytest.mark.parametrize(
    "raw, value",
    [
        ("3.5", 3.5),
        (" 3.5 ", 3.5),
        ("+2", 2.0),
        (".5", 0.5),
        ("1e2", 100.0),
        ("1e300", 1e300),
        ("1e400", None),  # overflows to inf
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("abc", None),
        ("3.5s", None),
        ("1_000", None),
        ("０x1", None),
        ("３", None),  # non-ASCII digit
        ("", None),
        ("0x10", None),
    ],
)
def test_time_values(raw, value):
    p = parse_response(
        f"<think>t</think><answer>matched</answer><start>{raw}</start><end>1e301</end><REFINE>"
    )
    assert p.start == value
    assert p.times_ok is (value is not None and value <= 1e301)


def test_start_after_end_keeps_numbers():
    p = parse_response(
        "<think>t</think><answer>matched</answer><start>10</start><end>5</end><REFINE>"
    )
    assert (p.start, p.end) == (10.0, 5.0)
    assert not p.times_ok and not p.well_formed


def test_negative_start_invalid():
    p = parse_response(
        "<think>t</think><answer>matched</answer><start>-1</start><end>5</end><REFINE>"
    )
    assert p.start == -1.0 and not p.times_ok


def test_start_equals_end_is_valid():
    p = parse_response(
        "<think>t</think><answer>matched</answer><start>4</start><end>4</end><REFINE>"
    )
    assert p.times_ok and p.well_formed


def test_matched_without_times():
    p = parse_response("<think>t</think><answer>matched</answer><start>4</start><REFINE>")
    assert p.answer_ok and not p.times_ok and p.end is None


@pytest.mark.parametrize("times", ["<start>1</start><end>2</end>", "<start>1</start>", "<end>"])
def test_not_matched_with_time_tags(times):
    p = parse_response(f"<think>t</think><answer>not_matched</answer>{times}<REFINE>")
    assert p.answer == "not_matched" and not p.times_ok and not p.well_formed


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("matched", "matched"),
        (" not_matched\n", "not_matched"),
        ("Matched", None),
        ("yes", None),
        ("", None),
    ],
)
def test_answer_values(answer, parsed):
    p = parse_response(f"<answer>{answer}</answer>")
    assert p.answer == parsed and p.answer_ok is (parsed is not None)


def test_no_answer_means_times_not_ok():
    p = parse_response("<think>t</think><start>1</start><end>2</end><REFINE>")
    assert p.answer is None and not p.times_ok and p.think_ok and p.refine_ok


def test_repeated_tags_first_wins():
    p = parse_response(
        "<think>a</think><think>b</think><answer>matched</answer><answer>not_matched</answer>"
        "<start>1</start><start>9</start><end>2</end><REFINE>"
    )
    assert (p.think, p.answer, p.start, p.end) == ("a", "matched", 1.0, 2.0)
    assert p.well_formed


def test_nested_tags_first_complete_occurrence():
    p = parse_response("<think><think>inner</think></think><answer>not_matched</answer><REFINE>")
    assert p.think == "<think>inner" and p.think_ok and p.well_formed


def test_empty_or_blank_think():
    assert not parse_response(
        "<think>  \n</think>" + GOOD_NOT[GOOD_NOT.index("<answer>") :]
    ).think_ok
    assert not parse_response("<think>unclosed <answer>not_matched</answer><REFINE>").think_ok


def test_truncated_prefixes_never_well_formed():
    for text in (GOOD_MATCHED, GOOD_NOT):
        for i in range(len(text)):
            assert not parse_response(text[:i]).well_formed


@pytest.mark.parametrize(
    "args",
    [
        ("matched", "cat", 3.5, 7.0),
        ("matched", "multi\nline  think", 0, 0),
        ("matched", "x", 3, 7),
        ("matched", "x", 1e-7, 1e16),
        ("matched", "x", 0.1 + 0.2, 12345.678901234567),
        ("not_matched", "nothing here", None, None),
    ],
)
def test_format_round_trip(args):
    answer, think, start, end = args
    p = parse_response(format_response(answer, think, start, end))
    assert p.well_formed
    assert (p.answer, p.think) == (answer, think)
    assert p.start == (None if start is None else float(start))
    assert p.end == (None if end is None else float(end))


def test_format_canonical_string():
    assert format_response("matched", "cat", 1, 2.5) == (
        "<think>cat</think> <answer>matched</answer> <start>1.0</start> <end>2.5</end> <REFINE>"
    )
    assert (
        format_response("not_matched", "no")
        == "<think>no</think> <answer>not_matched</answer> <REFINE>"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("yes", "t", None, None),
        ("matched", "t", None, None),
        ("matched", "t", 1.0, None),
        ("matched", "t", 5.0, 1.0),
        ("matched", "t", -1.0, 1.0),
        ("matched", "t", math.nan, 1.0),
        ("matched", "t", 0.0, math.inf),
        ("not_matched", "t", 1.0, 2.0),
        ("not_matched", "  ", None, None),
        ("not_matched", "a </think> b", None, None),
        ("not_matched", "a <REFINE>", None, None),
    ],
)
def test_format_rejects(args):
    with pytest.raises(ValueError):
        format_response(*args)


FRAGMENTS = [
    *"<think> </think> <answer> </answer> <start> </start> <end> </end> <REFINE> <REFINE".split(),
    *"REFINE> <|im_end|> </s> matched not_matched Matched nan inf -inf 1e400 1e-400".split(),
    *"-3 0 12.5 . e + 1_0 0x1f < > / | é 日本 🎬 ３ ١".split(),
    *[" ", "\n", "\t", "\x00", "\ud800"],
]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 25)):
        r = rng.random()
        if r < 0.6:
            parts.append(rng.choice(FRAGMENTS))
        elif r < 0.8:
            parts.append(
                repr(rng.uniform(-1e6, 1e6))
                if rng.random() < 0.5
                else str(rng.randint(-99, 10**30))
            )
        else:
            parts.append("".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(1, 5))))
    text = "".join(parts)
    return text[: rng.randint(0, len(text))] if rng.random() < 0.3 else text


def _check_invariants(text: str, p: ParsedResponse) -> None:
    assert p.answer in (None, "matched", "not_matched")
    assert p.answer_ok is (p.answer is not None)
    for t in (p.start, p.end):
        assert t is None or (isinstance(t, float) and math.isfinite(t))
    assert p.think_ok is (p.think is not None and p.think.strip() != "")
    assert not p.refine_ok or p.has_refine
    assert p.has_refine is ("<REFINE>" in text)
    if p.times_ok and p.answer == "not_matched":
        assert "<start>" not in text and "<end>" not in text
    if p.well_formed:
        assert p.answer is not None and p.think_ok and p.refine_ok
        if p.matched:
            assert p.start is not None and p.end is not None and 0 <= p.start <= p.end


def test_fuzz_never_raises():
    rng = random.Random(1234)
    seen_well_formed = 0
    for _ in range(4000):
        text = _random_text(rng)
        p = parse_response(text)
        _check_invariants(text, p)
        assert parse_response(text) == p
        seen_well_formed += p.well_formed
    # Valid responses with noise around them, so the well-formed branch is exercised too.
    for _ in range(1000):
        s = rng.uniform(0, 100)
        base = format_response("matched", "t", s, s + rng.uniform(0, 50))
        text = _random_text(rng) + base + rng.choice(["", "<|im_end|>", _random_text(rng)])
        p = parse_response(text)
        _check_invariants(text, p)
        seen_well_formed += p.well_formed
    assert seen_well_formed > 100


def test_fuzz_round_trip():
    rng = random.Random(99)
    for _ in range(500):
        think = "".join(
            rng.choice(["a", " ", "\n", "é", "<", ">", "🎬", "7"])
            for _ in range(rng.randint(1, 20))
        )
        if not think.strip():
            think += "x"
        if rng.random() < 0.5:
            start = rng.uniform(0, 1e4)
            end = start + rng.uniform(0, 1e3)
            p = parse_response(format_response("matched", think, start, end))
            assert (p.start, p.end) == (start, end)
        else:
            p = parse_response(format_response("not_matched", think))
        assert p.well_formed and p.think == think


@pytest.mark.parametrize("unit", ["<think>", "<think>x<answer>", "<start><end>", "<REFINE>"])
def test_parse_is_linear_in_repeated_unclosed_tags(unit):
    """1 MB of one unclosed tag over and over: a lazy regex retried its scan from every copy
    (80,000 characters took 9-13 s); two finds per tag read the text a few times."""
    parsed = parse_response(unit * (1_000_000 // len(unit)))  # quadratic, this took hours
    assert not parsed.well_formed and parsed.answer is None


def test_first_tag_then_first_close_after_it():
    parsed = parse_response("</think><think>a<think>b</think>c</think><answer>matched</answer>")
    assert parsed.think == "a<think>b" and parsed.answer == "matched"
