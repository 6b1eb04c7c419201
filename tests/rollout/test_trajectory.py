from dataclasses import fields

from rollout.rewards import REWARD_PARTS, RewardParts
from rollout.trajectory import TURN_SCHEMA, Turn, table_to_turns, turns_to_table


def turn(**kw) -> Turn:
    base = dict(episode_id="q#0", query_id="q", sample=0, turn=1, query_text="a red circle",
                gt_video_id="v1", gt_start=1.0, gt_end=3.0, video_id="v2", video_path="/v2.mp4",
                frame_times=[0.0, 1.0], retrieved_ids=["v2", "v1"], retrieved_scores=[0.5, 0.25],
                prompt_ids=[1, 2, 3], response_ids=[4, 5], sampling_logprobs=[-0.5, -1.0],
                response_text="<answer>not_matched</answer>")
    return Turn(**(base | kw))


def test_schema_is_the_dataclass_plus_the_derived_mask():
    assert TURN_SCHEMA.names == [f.name for f in fields(Turn)] + ["loss_mask"]


def test_every_reward_part_has_its_column():
    assert REWARD_PARTS == tuple(f.name for f in fields(RewardParts))
    assert {f"reward_{p}" for p in REWARD_PARTS} <= {f.name for f in fields(Turn)}


def test_round_trip_through_arrow():
    t = turn(soft_tokens=[[0.5, 0.25]], reward_found=1.0, answer="matched", pred_start=1.0)
    table = turns_to_table([t, turn(sample=1)])
    assert table.column("loss_mask").to_pylist()[0] == [0, 0, 0, 1, 1]
    back = table_to_turns(table)
    assert back[0] == t and back[1].soft_tokens == [] and back[1].answer is None
