"""SFT cold-start examples from the corpus: for every training query, one turn whose top-1 is
the ground-truth video (target: matched, with the ground-truth span) and one whose top-1 is a
wrong video (target: not_matched, then the soft tokens must find the right one).

The reasoning first says what the shown video contains (its annotated training moments, in
time order, in the sentence the pretrained policy describes videos with; for the synthetic
corpus every event, so the trace starts with the very caption the policy was pretrained to
write, and SFT does not teach it to leave events out), then the verdict:
which of them is the query, or none. A bare "shows / does not show" verdict puts the whole
decision on one early token, and the tiny policy learnt only a prior from it (VER 50 % on the
test split); looking first, then comparing, is what the trace teaches instead.

The wrong top-1 shown is the best-ranked wrong *annotated training* video of the unrefined
query's search (what the agent would really have been shown; only training annotations may
be written into a target), falling back to the best-ranked wrong video. InfoNCE negatives
follow the rollout's order: the best-ranked wrong video, then hard negatives from the top-k
pool, then random fill from the rest of the corpus. Video vectors are constants (the index's
embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rollout.parsing import format_response


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


def moment_sentence(text: str, start: float, end: float) -> str:
    return f"The video shows {text} from {start:g} to {end:g} seconds."


def reasoning(moments: list[tuple[str, float, float]], answer: str, start: float | None = None,
              end: float | None = None) -> str:
    """`moments`: (text, start, end) annotated in the shown video; the verdict names the span."""
    seen = [moment_sentence(*m) for m in sorted(moments, key=lambda m: (m[1], m[2]))]
    verdict = (f"The query is the moment from {start:g} to {end:g} seconds." if answer == "matched"
               else "None of them is the query.")
    return " ".join([*seen, verdict])


def _negatives(gt: str, ranked: list[str], pool: list[str], k: int,
               rng: np.random.Generator) -> list[str]:
    hard = [v for v in dict.fromkeys(ranked) if v != gt][:k]
    rest = [v for v in pool if v != gt and v not in hard]
    if len(hard) + len(rest) < k:
        raise ValueError(f"InfoNCE needs {k} negatives but the corpus has only "
                         f"{len(hard) + len(rest)} other videos")
    fill = rng.choice(len(rest), size=k - len(hard), replace=False) if k > len(hard) else []
    return hard + [rest[i] for i in fill]


def build_sft_examples(queries: list[dict], video_paths: dict[str, str],
                       vectors: dict[str, np.ndarray], topk: dict[str, list[str]],
                       num_negatives: int, seed: int,
                       annotated: list[dict] | None = None) -> list[SFTExample]:
    """`queries`: rows of the query table to make examples of; `annotated`: the training rows
    whose moments the reasoning may describe (default: `queries`); `topk`: query_id -> video
    ids the unrefined query retrieved, best first. Returns matched and not-matched examples,
    shuffled (seeded)."""
    if num_negatives < 1:
        raise ValueError("the not-matched example shows a negative: num_negatives must be >= 1")
    rng = np.random.default_rng(seed)
    pool = sorted(v for v in video_paths if v in vectors)
    moments: dict[str, list[tuple[str, float, float]]] = {}
    for r in annotated if annotated is not None else queries:
        moments.setdefault(r["video_id"], []).append((r["text"], r["start_s"], r["end_s"]))
    out = []
    for q in queries:
        gt, qid = q["video_id"], q["query_id"]
        if gt not in vectors:
            raise KeyError(f"query {qid}: no vector for its video {gt}")
        ranked = [v for v in topk.get(qid, []) if v in vectors]
        negs = _negatives(gt, ranked, pool, num_negatives, rng)
        neg_vecs = np.stack([vectors[v] for v in negs]).astype(np.float32)
        pos = np.asarray(vectors[gt], np.float32)
        wrong = next((v for v in [*ranked, *negs] if v != gt and v in moments), negs[0])
        for answer, shown in (("matched", gt), ("not_matched", wrong)):
            span = (q["start_s"], q["end_s"]) if answer == "matched" else (None, None)
            think = reasoning(moments.get(shown, []), answer, *span)
            out.append(SFTExample(qid, q["text"], shown, video_paths[shown], answer,
                                  format_response(answer, think, *span), pos, neg_vecs))
    return [out[i] for i in rng.permutation(len(out))]
