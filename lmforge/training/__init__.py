"""The training loop and what it calls: schedules, checkpoints, metrics, callbacks."""
