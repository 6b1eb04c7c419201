"""Config overrides every test job shares, so that jobs started as subprocesses (cli, ray job
submit) find the session's tiny models in the cache instead of rebuilding them (the model
recipe includes the pretraining settings). Jobs with other video settings get a cache of
their own: the recipe includes the video config too."""

# Random tiny models: the engine/learner tests compare exact numbers on them; the pretrainers
# are tested on their own (tests/*/test_pretrain.py).
TEST_MODELS = ["model.tiny_pretrain.embedder.steps=0", "model.tiny_pretrain.policy.steps=0"]

# Eager vLLM for the jobs tests start: vLLM keys its compile cache on the model's path, so an
# engine on a fresh temporary model folder compiles for ~30 s. The compiled engine (the
# default) is tested in tests/rollout/test_engine.py and by the `ray job submit` test.
EAGER_ENGINE = ["rollout.enforce_eager=true"]
