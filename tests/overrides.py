"""Config overrides every test job shares, so that jobs started as subprocesses (cli, ray job
submit) find the session's tiny models in the cache instead of rebuilding them (the model
recipe includes the pretraining settings). Jobs with other video settings get a cache of
their own: the recipe includes the video config too."""

from tiny.build import RANDOM_TINY_MODELS

# Random tiny models: the engine/learner tests compare exact numbers on them; the pretrainers
# are tested on their own (tests/*/test_pretrain.py).
TEST_MODELS = RANDOM_TINY_MODELS

# A job of a few steps on a small corpus: every stage runs, briefly.
SHORT_JOB = [
    "corpus.synth.num_videos=12", "video.max_frames=8", "rollout.group_size=2",
    "rollout.max_turns=2", "rollout.sampling.max_tokens=24", "train.sft_steps=2",
    "train.grpo_steps=2", "train.queries_per_step=2", "learner.micro_batch_size=4",
    "learner.checkpoint_every=1", "learner.infonce_negatives=3", "retrieval.topk=5",
    "learner.kl_beta=0.0", "learner.keep_checkpoints=1", "sqr.fit_steps=20",
    # random models earn -1 in every episode: dynamic sampling would drop every group (its
    # path is tested in test_dynamic_sampling and runs in the job-submit test)
    "train.dynamic_sampling=false",
] + TEST_MODELS
