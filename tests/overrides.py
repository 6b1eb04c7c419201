"""Config overrides every test job shares, so that jobs started as subprocesses (cli, ray job
submit) find the session's tiny models in the cache instead of rebuilding them (the model
recipe includes the pretraining settings). Jobs with other video settings get a cache of
their own: the recipe includes the video config too."""

TEST_MODELS = ["model.tiny_pretrain.num_videos=128", "model.tiny_pretrain.embedder.steps=150",
               "model.tiny_pretrain.policy.steps=60"]
