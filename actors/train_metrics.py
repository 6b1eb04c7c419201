"""Training metrics to the Ray dashboard (ray.util.metrics), TensorBoard and a history
that the final report plots."""

from __future__ import annotations

from pathlib import Path

from ray.util.metrics import Counter, Gauge
from torch.utils.tensorboard import SummaryWriter


class TrainMetrics:
    def __init__(self, log_dir: Path):
        self.writer = SummaryWriter(str(log_dir))
        self.history: list[dict] = []
        self._step_s = Gauge("learner_step_seconds", "Seconds per learner update.",
                             tag_keys=("stage",))
        self._reward = Gauge("reward_component", "Mean reward of the last GRPO step.",
                             tag_keys=("component",))
        self._mismatch = Gauge("logprob_mismatch",
                               "Mean |learner - sampler| log-prob on generated tokens.")
        self._step = Gauge("train_step", "Current training step.", tag_keys=("stage",))
        self._staleness = Gauge("grpo_staleness",
                                "Mean weight versions between sampling and training (last step).")
        self._dropped = Counter("grpo_stale_episodes_dropped",
                                "Episodes dropped for being older than train.max_staleness.")

    def learner_step(self, metrics: dict, stage: str, step: int) -> None:
        if "step_seconds" in metrics:
            self._step_s.set(metrics["step_seconds"], tags={"stage": stage})
        if "logprob_mismatch" in metrics:
            self._mismatch.set(metrics["logprob_mismatch"])
        if "staleness" in metrics:
            self._staleness.set(metrics["staleness"])
        if metrics.get("stale_episodes_dropped"):
            self._dropped.inc(metrics["stale_episodes_dropped"])
        self._step.set(step, tags={"stage": stage})
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.history.append({"stage": stage, "step": step, **metrics})

    def rewards(self, parts: dict[str, float], step: int) -> None:
        for name, value in parts.items():
            self._reward.set(value, tags={"component": name})
            self.writer.add_scalar(f"reward/{name}", value, step)

    def close(self) -> None:
        self.writer.close()
