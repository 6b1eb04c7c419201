"""Rollout: the agent loop as a state machine, prompt building, output parsing, rewards and trajectory records. Plain Python; an actor drives it."""
