"""Learner: GRPO and SFT losses, advantages, the DeepSpeed engine setup, checkpoints and weight export. Plain torch; Ray actors in actors/ host it."""
