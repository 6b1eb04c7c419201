"""SFT cold-start examples from the corpus: for every training query, one turn whose top-1 is
the ground-truth video (target: matched, with the ground-truth span) and one whose top-1 is a
wrong video (target: not_matched, then the soft tokens must find the right one).

The wrong top-1 is the best-ranked wrong video of the unrefined query's search (what the agent
would really have been shown), falling back to a random one. InfoNCE negatives follow the
rollout's order: the wrongly shown top-1, then hard negatives from the top-k pool, then random
fill from the rest of the corpus. Video vectors are constants (the index's embeddings).
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


def reasoning(query: str, answer: str, start: float, end: float) -> str:
    if answer == "matched":
        return f"The video shows {query} from {start:g} to {end:g} seconds."
    return f"The video does not show {query}."


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
                       num_negatives: int, seed: int) -> list[SFTExample]:
    """`queries`: rows of the query table; `topk`: query_id -> video ids the unrefined query
    retrieved, best first. Returns matched and not-matched examples, shuffled (seeded)."""
    if num_negatives < 1:
        raise ValueError("the not-matched example shows a negative: num_negatives must be >= 1")
    rng = np.random.default_rng(seed)
    pool = sorted(v for v in video_paths if v in vectors)
    out = []
    for q in queries:
        gt, qid = q["video_id"], q["query_id"]
        if gt not in vectors:
            raise KeyError(f"query {qid}: no vector for its video {gt}")
        ranked = [v for v in topk.get(qid, []) if v in vectors]
        negs = _negatives(gt, ranked, pool, num_negatives, rng)
        neg_vecs = np.stack([vectors[v] for v in negs]).astype(np.float32)
        pos = np.asarray(vectors[gt], np.float32)
        for answer, shown in (("matched", gt), ("not_matched", negs[0])):
            span = (q["start_s"], q["end_s"]) if answer == "matched" else (None, None)
            think = reasoning(q["text"], answer, q["start_s"], q["end_s"])
            out.append(SFTExample(qid, q["text"], shown, video_paths[shown], answer,
                                  format_response(answer, think, *span), pos, neg_vecs))
    return [out[i] for i in rng.permutation(len(out))]
