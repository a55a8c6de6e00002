"""`lmforge train` in this process, optionally SIGKILLing itself inside a checkpoint write (for the kill soak).

usage: soak_train.py PRESET_JSON RUN_DIR
With $SOAK_KILL_AT_FSYNC=N (rank $SOAK_KILL_RANK, default 0), the process kills itself with SIGKILL just before
the N-th fsync of checkpoint code: between a slot's files, before its meta.json is in place, or mid-rotation.
With $SOAK_KILL_AT_STEP=N it does so at the start of its N-th train step of this session (a rank that dies).
With $SOAK_STARTED=PATH (and $SOAK_STARTED_AT=K, default 1), rank 0 creates PATH as its K-th train step of this
session begins, so a test can time a kill from a point in training rather than from the launch (whose start-up
time varies by machine).
"""
import os
import signal
import sys

import lmforge.training.checkpoint as checkpoint
from lmforge.cli import main
from lmforge.training.trainer import Trainer

if __name__ == "__main__":
    me = int(os.environ.get("RANK", "0")) == int(os.environ.get("SOAK_KILL_RANK", "0"))
    kill_at_step = int(os.environ.get("SOAK_KILL_AT_STEP", "0")) if me else 0
    started = os.environ.get("SOAK_STARTED") if int(os.environ.get("RANK", "0")) == 0 else None
    started_at = int(os.environ.get("SOAK_STARTED_AT", "1"))
    if kill_at_step or started:
        real_step, steps = Trainer.train_step, [0]

        def step_or_die(self, model, data_iter):
            steps[0] += 1
            if steps[0] == started_at and started:
                open(started, "w").close()
            if steps[0] == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self, model, data_iter)

        Trainer.train_step = step_or_die
    kill_at = int(os.environ.get("SOAK_KILL_AT_FSYNC", "0"))
    if kill_at and me:
        real, calls = checkpoint._fsync_path, [0]

        def fsync_or_die(path):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path)

        checkpoint._fsync_path = fsync_or_die
    preset, run_dir = sys.argv[1], sys.argv[2]
    sys.exit(main(["train", preset, "--run-dir", run_dir, "--train.progress_bar", "false"]))
