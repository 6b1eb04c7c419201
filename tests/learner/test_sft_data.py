"""SFT cold-start data: the reasoning and its word-by-word check, the refinement target, and
the matched / not-matched examples of a split."""

from __future__ import annotations

import numpy as np
import pytest

from learner.sft_data import build_sft_examples
from models.parsing import parse_response


def test_reasoning_checks_the_query_against_each_moment_then_gives_the_verdict():
    from learner.sft_data import reasoning

    moments = [("a red circle", 5.0, 9.0), ("a blue square", 0.0, 3.0)]
    skip = frozenset({"a"})
    assert reasoning("a red circle", moments, "matched", skip, 5.0, 9.0) == (
        "The video shows a blue square from 0 to 3 seconds. Check: red blue differs, circle "
        "square differs. The video shows a red circle from 5 to 9 seconds. Check: red red same, "
        "circle circle same. The query is the moment from 5 to 9 seconds.")
    assert reasoning("a red square", moments[:1], "not_matched", skip) == (
        "The video shows a red circle from 5 to 9 seconds. Check: red red same, square circle "
        "differs. None of them is the query.")
    assert reasoning("a red circle", [], "not_matched", skip) == "None of them is the query."


def test_check_puts_each_query_word_beside_the_captions_word_in_its_place():
    from learner.sft_data import check, template_words

    texts = ["a red circle moves left on a navy background",
             "a blue square moves up on a dark green background",
             "a yellow triangle moves down on a gray background"]
    skip = template_words(texts)
    assert skip == {"a", "moves", "on", "background"}
    assert "green" in template_words([*texts, "a green circle moves up on a black background"])
    assert check(texts[0], texts[1], skip) == (
        "Check: red blue differs, circle square differs, left up differs, navy dark green differs.")
    assert check(texts[0], texts[0].replace("circle", "square"), skip) == (
        "Check: red red same, circle square differs, left left same, navy navy same.")
    assert check("a red circle", "a red circle quickly", frozenset({"a"})) == (
        "Check: red red same, circle circle same, nothing quickly differs.")
    assert check("a", "a", frozenset({"a"})) == "Check: nothing."
    # Case is ignored (the synthetic queries capitalise the colour): lower-case words out.
    assert check("a Red circle moves left on a navy background", texts[0], skip) == (
        "Check: red red same, circle circle same, left left same, navy navy same.")
    assert template_words(["A red circle", "a blue square", "a green triangle"]) == {"a"}


def test_the_refinement_target_is_what_the_closest_moment_lacks():
    from learner.sft_data import differing_words

    skip = frozenset({"a", "moves", "on", "background"})
    query = "a Red circle moves left on a navy background"
    shown = [("a blue square moves up on a dark green background", 0, 4),
             ("a blue circle moves left on a navy background", 4, 8)]
    assert differing_words(query, shown, skip) == ("red",)
    # a run of unequal length gives each of its query words; "nothing" is no word
    assert differing_words(query, shown[:1], skip) == ("red", "circle", "left", "navy")
    assert differing_words("a red circle quickly", [("a red circle", 0, 1)], frozenset({"a"})) == (
        "quickly",)
    assert differing_words("a red circle", [("a red circle quickly", 0, 1)], frozenset({"a"})) == ()
    assert differing_words(query, [], skip) == ()


def test_sft_examples_stay_inside_their_split(learner_cfg, corpus_rows):
    """A video outside `annotated` (e.g. a test video) is never shown, never a negative and its
    moments never enter a target; the shown wrong video is no negative either (the refined
    search never shows it again)."""
    queries, paths = corpus_rows
    q = queries[0]
    other = next(r for r in queries if r["video_id"] != q["video_id"])
    outside = next(v for v in sorted(paths) if v not in {q["video_id"], other["video_id"]})
    third = next(r for r in queries if r["video_id"] not in {q["video_id"], other["video_id"], outside})
    vectors = {v: np.full(4, i, np.float32) for i, v in enumerate(sorted(paths))}
    split = [q, other, third]
    examples = build_sft_examples([q], paths, vectors, {q["query_id"]: [outside, other["video_id"]]},
                                  learner_cfg.learner.infonce_negatives, 0, annotated=split)
    wrong = next(e for e in examples if e.answer == "not_matched")
    assert wrong.video_id == other["video_id"] and other["text"] in wrong.target
    assert "None of them is the query." in wrong.target
    assert [float(n[0]) for n in wrong.negatives] == [float(vectors[third["video_id"]][0])]


def test_sft_examples_pair_matched_and_not_matched_turns(learner_cfg, sft_examples, corpus_rows):
    queries, paths = corpus_rows
    k = learner_cfg.learner.infonce_negatives
    assert len(sft_examples) == 4
    for q in queries[:2]:
        mine = {e.answer: e for e in sft_examples if e.query_id == q["query_id"]}
        matched, wrong = mine["matched"], mine["not_matched"]
        assert matched.video_id == q["video_id"] != wrong.video_id
        parsed = parse_response(matched.target)
        assert parsed.well_formed and (parsed.start, parsed.end) == (q["start_s"], q["end_s"])
        assert parse_response(wrong.target).well_formed and not parse_response(wrong.target).matched
        # the not-matched turn names what the shown video lacks; a matched turn searches no more
        assert wrong.refine_words and set(wrong.refine_words) <= set(q["text"].lower().split())
        assert matched.refine_words == ()
        # the wrongly shown top-1 is the best-ranked wrong annotated video; the best-ranked
        # wrong video leads the negatives
        annotated = {r["video_id"] for r in queries}
        assert wrong.video_id == next(v for v in sorted(paths)[:5] if v != q["video_id"] and v in annotated)
        assert wrong.negatives.shape == (k, wrong.positive.shape[0])
        cos = wrong.negatives @ wrong.positive
        assert (cos < 0.999).all(), "the ground truth is never a negative"
    # the heads fit's turns: the first k wrong videos of the ranking, each a not-matched turn
    # with its own negatives; k = 1 gives SFT's examples exactly
    ranked = {q["query_id"]: sorted(paths)[:5] for q in queries[:2]}
    vectors = {v: sft_examples[0].positive + 0.01 * i for i, v in enumerate(sorted(paths))}
    one = build_sft_examples(queries[:2], paths, vectors, ranked, k, 0, annotated=queries)
    again = build_sft_examples(queries[:2], paths, vectors, ranked, k, 0, annotated=queries,
                               wrong_per_query=1)
    assert [(e.query_id, e.video_id, e.target) for e in one] == [
        (e.query_id, e.video_id, e.target) for e in again]
    three = build_sft_examples(queries[:2], paths, vectors, ranked, k, 0, annotated=queries,
                               wrong_per_query=3)
    for q in queries[:2]:
        shown = [e.video_id for e in three if e.query_id == q["query_id"] and e.answer == "not_matched"]
        want = [v for v in ranked[q["query_id"]] if v != q["video_id"] and v in annotated][:3]
        assert sorted(shown) == sorted(want)
        for e in three:
            if e.query_id == q["query_id"] and e.answer == "not_matched":
                assert not any(np.allclose(n, vectors[e.video_id]) for n in e.negatives)
    few = {v: paths[v] for v in sorted(paths)[:3]}
    with pytest.raises(ValueError, match="no other video"):
        build_sft_examples(queries[:1], few | {queries[0]["video_id"]: "x"},
                           {v: sft_examples[0].positive for v in paths}, {}, k, 0)
