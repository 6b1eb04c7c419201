"""Which GRPO steps keep their turns on disk, and that the file reads back as trajectories."""

import pyarrow.parquet as pq

from actors.grpo_stage import save_rollouts
from rollout.trajectory import Turn, table_to_turns


def _episode(sample: int) -> list[Turn]:
    return [Turn(episode_id=f"q#{sample}", query_id="q", sample=sample, turn=1, query_text="a",
                 gt_video_id="v", gt_start=0.0, gt_end=1.0, video_id="v", video_path="v.mp4",
                 frame_times=[0.0], retrieved_ids=["v"], retrieved_scores=[1.0],
                 prompt_ids=[1, 2], response_ids=[3], sampling_logprobs=[-0.5],
                 response_text="x", is_final=True)]


def test_every_nth_step_is_saved_and_reads_back(tmp_path):
    turns = _episode(0) + _episode(1)
    saved = [save_rollouts(tmp_path, step, turns, every=2) for step in range(4)]
    assert saved[1] is None and saved[3] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grpo_000000.parquet", "grpo_000002.parquet"]
    back = table_to_turns(pq.read_table(saved[2]))
    assert [(t.episode_id, t.response_ids) for t in back] == [("q#0", [3]), ("q#1", [3])]


def test_zero_saves_nothing(tmp_path):
    assert save_rollouts(tmp_path / "r", 0, _episode(0), every=0) is None
    assert not (tmp_path / "r").exists()
