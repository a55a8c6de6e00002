"""A callback that stops a run after a given step (it saves there), so a second session can resume it."""
from lmforge.training.callbacks import Callback


class StopAt(Callback):
    """Requests a stop at the end of `step` (called on logged steps: use log_interval 1)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            trainer.request_stop("test stop")
