"""The job's closing report: a before/after table and a PNG of rewards over steps and
metrics per turn."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rollout.rewards import REWARD_PARTS  # noqa: E402

COLUMNS = ("R1@0.3", "R1@0.5", "R1@0.7", "VER", "VR")


def comparison_table(evals: dict[str, dict]) -> str:
    """evals: tag -> compute_metrics output. Final metrics plus single-shot (turn-1) VR, the
    ground truth shown at any turn, VR of the refined searches against the first search's next
    result on the same turns (VR@SQR, VR@next), and the mean episode reward."""
    head = (f"{'model':<14}" + "".join(f"{c:>9}" for c in COLUMNS)
            + f"{'VR@turn1':>10}{'VR@any':>8}{'VR@SQR':>8}{'VR@next':>8}{'reward':>8}{'n':>5}")
    lines = [head, "-" * len(head)]
    for tag, m in evals.items():
        final = m["final"]
        turn1 = m["per_turn"].get(1, m["per_turn"].get("1", {})).get("VR", 0.0)
        ref = m.get("refinement", {})
        ref = ref if ref.get("refined_turns") else {}  # no refined turn: nothing to compare
        lines.append(f"{tag:<14}" + "".join(f"{final[c]:>9.1f}" for c in COLUMNS)
                     + f"{turn1:>10.1f}{final.get('VR@any', float('nan')):>8.1f}"
                     + f"{ref.get('VR_refined', float('nan')):>8.1f}"
                     + f"{ref.get('VR_next_in_ranking', float('nan')):>8.1f}"
                     + f"{final.get('reward', float('nan')):>8.3f}"
                     + f"{final['num_queries']:>5}")
    return "\n".join(lines)


CI_COLUMNS = (*COLUMNS, "reward")


def interval_table(evals: dict[str, dict], differences: dict[str, dict]) -> str:
    """95 % bootstrap intervals over queries: each policy's final metrics, then each paired
    difference (mean [low, high]); a difference whose interval holds 0 is not a result."""
    head = f"{'95% CI':<14}" + "".join(f"{c:>20}" for c in CI_COLUMNS)
    lines = [head, "-" * len(head)]

    def cell(v, fmt):
        return f"{'—':>20}" if v is None else f"{fmt(v):>20}"

    for tag, m in evals.items():
        ci = m.get("final_ci", {})
        lines.append(f"{tag:<14}" + "".join(
            cell(ci.get(c), lambda v, c=c: interval_text(v, c)) for c in CI_COLUMNS))
    for name, diff in differences.items():
        lines.append(f"{name:<14}" + "".join(
            cell(diff.get(c), lambda v, c=c: f"{signed_text(v[0], c)} {interval_text(v[1:], c)}")
            for c in CI_COLUMNS))
    return "\n".join(lines)


def refinement_line(evals: dict[str, dict]) -> str:
    """VR@SQR - VR@next with its 95 % interval, paired over each evaluation's refined turns."""
    parts = [f"{tag} {ref['VR_refined_minus_next'][0]:+.1f} "
             f"{interval_text(ref['VR_refined_minus_next'][1:], 'VR')} ({ref['refined_turns']} turns)"
             for tag, m in evals.items()
             if "VR_refined_minus_next" in (ref := m.get("refinement", {}))]
    return "VR@SQR - VR@next, paired over refined turns: " + ("; ".join(parts) or "none")


def signed_text(v: float, column: str) -> str:
    return f"{v:+.2f}" if column == "reward" else f"{v:+.1f}"


def interval_text(v, column: str) -> str:
    digits = 2 if column == "reward" else 1
    return f"[{v[0]:.{digits}f},{v[1]:.{digits}f}]"


SMOOTHING = 5  # steps in the training reward's moving mean


def smoothed(values: list[float], window: int = SMOOTHING) -> list[float]:
    """Trailing moving mean (the first points average what there is): one GRPO step's reward
    jumps with the few queries it drew."""
    return [sum(values[max(0, i + 1 - window): i + 1]) / (i + 1 - max(0, i + 1 - window))
            for i in range(len(values))]


def plot(history: list[dict], evals: dict[str, dict], path: Path) -> Path:
    fig, (left, right, refine) = plt.subplots(1, 3, figsize=(16, 4))
    grpo = [h for h in history if h.get("stage") == "grpo" and "reward_total" in h]
    if grpo:
        steps = [h["step"] for h in grpo]
        for key in ("reward_total", *(f"reward_{name}" for name in REWARD_PARTS)):
            left.plot(steps, [h.get(key, 0.0) for h in grpo], label=key.removeprefix("reward_"),
                      linewidth=0.8, alpha=0.6)
        left.plot(steps, smoothed([h["reward_total"] for h in grpo]), "k-", linewidth=2,
                  label=f"total, mean of {SMOOTHING}")
    # the held-out (greedy, eval split) reward: before GRPO at its first step, after at its last
    last = grpo[-1]["step"] if grpo else 0
    for tag, m in evals.items():
        if "reward" in m["final"]:
            left.plot([last if tag in ("grpo", "latest") else 0], [m["final"]["reward"]], "D",
                      markersize=8, label=f"{tag}: held-out reward")
    if left.get_legend_handles_labels()[0]:  # an empty legend makes matplotlib warn
        left.legend(fontsize=7, ncol=2, loc="lower right", framealpha=0.8)
    left.set(title="GRPO rewards per step", xlabel="step", ylabel="mean reward")
    width = 0.8 / max(1, len(evals))
    for i, (tag, m) in enumerate(evals.items()):
        turns = sorted(int(t) for t in m["per_turn"])
        vr = [m["per_turn"].get(t, m["per_turn"].get(str(t), {})).get("VR", 0.0) for t in turns]
        right.bar([t + i * width for t in turns], vr, width, label=tag)
    turns = sorted({int(t) for m in evals.values() for t in m["per_turn"]})
    right.set_xticks([t + width * (len(evals) - 1) / 2 for t in turns], [str(t) for t in turns])
    right.set(title="VR R@1 per turn (eval)", xlabel="turn", ylabel="%")
    if evals:  # a run without an eval stage has no bars to name
        right.legend(fontsize=8)
    _refinement_panel(refine, evals)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _refinement_panel(ax, evals: dict[str, dict]) -> None:
    """The paper's figure: the ground truth's mean rank in the whole corpus under the text
    query (turn 1) and under each refinement turn's query, per evaluation."""
    drawn = False
    for tag, m in evals.items():
        per_turn = m.get("refinement", {}).get("per_turn", {})
        if not per_turn:
            continue
        turns = sorted(per_turn, key=int)
        xs = [1] + [int(t) for t in turns]
        ys = [m["refinement"]["gt_rank_before"]] + [per_turn[t]["gt_rank_after"] for t in turns]
        ax.plot(xs, ys, "o-", label=tag)
        ax.set_xticks(xs)
        drawn = True
    ax.set(title="ground truth's mean rank, text -> refined (eval)", xlabel="turn",
           ylabel="rank in the corpus (lower is better)")
    if drawn:
        ax.legend(fontsize=8)
