"""Config overrides every test job shares, so that jobs started as subprocesses (cli, ray job
submit) find the session's tiny models in the cache instead of rebuilding them (the model
recipe includes the pretraining settings). Jobs with other video settings get a cache of
their own: the recipe includes the video config too."""

from tiny.build import RANDOM_TINY_MODELS

# Random tiny models: the engine/learner tests compare exact numbers on them; the pretrainers
# are tested on their own (tests/*/test_pretrain.py).
TEST_MODELS = RANDOM_TINY_MODELS
