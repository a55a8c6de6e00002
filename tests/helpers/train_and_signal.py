"""Train a preset in this process and send ourselves a signal at a given step (for kill/resume tests).

usage: train_and_signal.py PRESET_JSON RUN_DIR STEP SIGNAL   (SIGNAL: KILL or TERM; STEP 0 = never)
"""
import json
import os
import signal
import sys

from lmforge.config import load_preset
from lmforge.training.callbacks import Callback
from lmforge.training.trainer import train


class SignalAt(Callback):
    def __init__(self, step: int, sig: signal.Signals):
        self.step, self.sig = step, sig

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), self.sig)


if __name__ == "__main__":
    preset_path, run_dir, step, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    preset = load_preset(json.loads(open(preset_path).read()))
    result = train(preset, run_dir, [SignalAt(step, getattr(signal, "SIG" + sig))])
    print(json.dumps({"steps": result.steps, "stop_reason": result.stop_reason}))
