"""Config, plugin manager, records, rollout, algorithms and the run loop."""
