"""SFT cold-start examples from the corpus: for every training query, one turn whose top-1 is
the ground-truth video (target: matched, with the ground-truth span) and one whose top-1 is a
wrong video (target: not_matched, then the soft tokens must find the right one).

The reasoning first says what the shown video contains (its annotated training moments, in
time order, in the sentence the pretrained policy describes videos with; for the synthetic
corpus every event, so the trace holds the very caption the policy was pretrained to write,
and SFT does not teach it to leave events out), each followed by a word-by-word check of the
query against it, then the verdict: which of them is the query, or none. A bare "shows /
does not show" verdict puts the whole decision on one early token, from which the tiny policy
learns only a prior. The check writes each query word next to the caption's word in its place,
then "same" or "differs": every comparison is between two adjacent tokens, which it does
learn, and the verdict follows the checks. A check right after its caption copies from a fixed
distance back (docs/experiments.md, "The comparing verifier").

The wrong top-1 shown is the best-ranked wrong *annotated training* video of the unrefined
query's search (what the agent would really have been shown; only training annotations may
be written into a target), falling back to the best-ranked wrong video. InfoNCE negatives
follow the rollout's order: the best-ranked wrong video, then hard negatives from the top-k
pool, then random fill from the rest of the corpus. Video vectors are constants (the index's
embeddings).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from models.parsing import format_response


@dataclass
class SFTExample:
    query_id: str
    query: str
    video_id: str  # the top-1 shown in the turn
    video_path: str
    answer: str  # matched | not_matched
    target: str  # the assistant text to learn
    positive: np.ndarray  # [D_emb] the ground-truth video's vector
    negatives: np.ndarray  # [K, D_emb]
    # not matched: the query's words the check finds differing in the shown video (what the
    # refinement should add to the search: the heads fit's target, SFT's slot words)
    refine_words: tuple[str, ...] = ()


def moment_sentence(text: str, start: float, end: float) -> str:
    return f"The video shows {text} from {start:g} to {end:g} seconds."


SAME, DIFFERS = "same", "differs"  # the check's word after each pair


def _words(text: str) -> list[str]:
    """The words the check compares, case ignored (the synthetic queries may capitalise one)."""
    return text.lower().split()


def template_words(texts: list[str], share: float = 0.5) -> frozenset[str]:
    """Words at least `share` of the descriptions use ("a", "on", ...): they say nothing about
    which moment is meant, so the check skips them."""
    counts = Counter(w for t in texts for w in set(_words(t)))
    return frozenset(w for w, n in counts.items() if n >= share * len(texts))


def _content(words: list[str], skip: frozenset[str]) -> list[str]:
    return [w for w in words if w not in skip]


def _pairs(query: str, caption: str, skip: frozenset[str]) -> list[tuple[str, str]]:
    """(query words, caption words) in their places: difflib aligns the words (case ignored);
    template words are left out, and a run of unequal length is one pair."""
    q, c = _words(query), _words(caption)
    pairs = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, q, c, autojunk=False).get_opcodes():
        a, b = _content(q[i1:i2], skip), _content(c[j1:j2], skip)
        if op == "equal":
            pairs += [(w, w) for w in a]
        elif len(a) == len(b):
            pairs += list(zip(a, b, strict=True))
        else:
            pairs.append((" ".join(a) or "nothing", " ".join(b) or "nothing"))
    return pairs


def check(query: str, caption: str, skip: frozenset[str]) -> str:
    """Each content word of the query beside the caption's word in its place, then "same" or
    "differs"."""
    written = [f"{a} {b} {SAME if a == b else DIFFERS}" for a, b in _pairs(query, caption, skip)]
    return "Check: " + (", ".join(written) or "nothing") + "."


def differing_words(query: str, moments: list[tuple[str, float, float]],
                    skip: frozenset[str]) -> tuple[str, ...]:
    """The query's words that differ from the shown video's closest moment (the one with the
    fewest differing pairs, the earliest on a tie): what the video lacks, so what a refined
    search should stress. Empty when the video has no annotated moment."""
    best: list[str] | None = None
    for text, _, _ in sorted(moments, key=lambda m: (m[1], m[2])):
        words = [w for a, b in _pairs(query, text, skip) if a != b for w in a.split()
                 if a != "nothing"]
        if best is None or len(words) < len(best):
            best = words
    return tuple(best or ())


def reasoning(query: str, moments: list[tuple[str, float, float]], answer: str,
              skip: frozenset[str] = frozenset(), start: float | None = None,
              end: float | None = None) -> str:
    """`moments`: (text, start, end) annotated in the shown video; the verdict names the span;
    `skip`: the template words the check leaves out."""
    seen = [f"{moment_sentence(*m)} {check(query, m[0], skip)}"
            for m in sorted(moments, key=lambda m: (m[1], m[2]))]
    verdict = (f"The query is the moment from {start:g} to {end:g} seconds." if answer == "matched"
               else "None of them is the query.")
    return " ".join([*seen, verdict])


def _negatives(exclude: set[str], ranked: list[str], pool: list[str], k: int,
               rng: np.random.Generator) -> list[str]:
    """k videos of `pool` outside `exclude`: the highest `ranked` first, then a seeded draw;
    all of them when the pool holds fewer."""
    members = set(pool)
    hard = [v for v in dict.fromkeys(ranked) if v in members and v not in exclude][:k]
    rest = [v for v in pool if v not in exclude and v not in hard]
    if not hard and not rest:
        raise ValueError("InfoNCE needs at least one negative but the split has no other video")
    fill = min(k - len(hard), len(rest))
    drawn = rng.choice(len(rest), size=fill, replace=False) if fill > 0 else []
    return hard + [rest[i] for i in drawn]


def build_sft_examples(queries: list[dict], video_paths: dict[str, str],
                       vectors: dict[str, np.ndarray], topk: dict[str, list[str]],
                       num_negatives: int, seed: int,
                       annotated: list[dict] | None = None,
                       wrong_per_query: int = 1) -> list[SFTExample]:
    """`queries`: rows of the query table to make examples of; `annotated`: the training rows
    whose moments the reasoning may describe (default: `queries`); `topk`: query_id -> video
    ids the unrefined query retrieved, best first. Returns matched and not-matched examples,
    shuffled (seeded): one matched turn per query, and a not-matched turn for each of its
    first `wrong_per_query` wrong annotated videos (SFT: 1; the heads fit takes more turns)."""
    if num_negatives < 1:
        raise ValueError("the not-matched example shows a negative: num_negatives must be >= 1")
    rng = np.random.default_rng(seed)
    moments: dict[str, list[tuple[str, float, float]]] = {}
    annotated = annotated if annotated is not None else queries
    for r in annotated:
        moments.setdefault(r["video_id"], []).append((r["text"], r["start_s"], r["end_s"]))
    skip = template_words([r["text"] for r in annotated])
    # Negatives and the wrongly shown video come from the split's own videos: training never
    # sees another split's video, and the ones it could rank against are those it searches.
    pool = sorted(v for v in moments if v in vectors)
    out = []
    for q in queries:
        gt, qid = q["video_id"], q["query_id"]
        if gt not in vectors:
            raise KeyError(f"query {qid}: no vector for its video {gt}")
        ranked = [v for v in topk.get(qid, []) if v in vectors]
        others = [v for v in pool if v != gt]
        if not others:
            raise ValueError(f"query {qid}: its split has no other video to show as not "
                             "matched; use a larger corpus (corpus.synth.num_videos) or a "
                             "smaller train.grpo_video_fraction")
        wrongs = [v for v in ranked if v != gt and v in moments][:wrong_per_query]
        if not wrongs:  # the search found none of the split's other videos
            wrongs = [others[rng.integers(len(others))]]
        pos = np.asarray(vectors[gt], np.float32)
        # The refined search never shows the rejected video again, so it is no negative; the
        # matched turn takes the first not-matched turn's negatives.
        negs = {w: _negatives({gt, w}, ranked, pool, num_negatives, rng) for w in wrongs}
        turns = [("matched", gt, wrongs[0])] + [("not_matched", w, w) for w in wrongs]
        for answer, shown, rejected in turns:
            neg_vecs = np.stack([vectors[v] for v in negs[rejected]]).astype(np.float32)
            span = (q["start_s"], q["end_s"]) if answer == "matched" else (None, None)
            think = reasoning(q["text"], moments.get(shown, []), answer, skip, *span)
            lacks = (differing_words(q["text"], moments.get(shown, []), skip)
                     if answer == "not_matched" else ())
            out.append(SFTExample(qid, q["text"], shown, video_paths[shown], answer,
                                  format_response(answer, think, *span), pos, neg_vecs, lacks))
    return [out[i] for i in rng.permutation(len(out))]
