"""Train each planned run in its own `lmforge train` process, or reuse it when it already finished.

A process per run: a crash, an OOM or a bad preset fails that run only (reported in the table), the peak memory
read from it is that run's own, and Ctrl-C reaches the run's graceful stop (it saves), so the next `compare`
resumes it and reuses every run that finished.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmforge.compare.spec import PlannedRun

FINISHED = ("completed", "early stopping", "time budget")  # stop reasons of a run that spent its budget
PRESET_FILE = "compare_preset.json"
LOG_FILE = "train.log"


class CompareInterrupted(Exception):
    """Ctrl-C during a run: that run saved and stopped; the runs finished so far are reported."""


@dataclass
class RunOutcome:
    planned: PlannedRun
    run_dir: Path
    status: str  # "trained", "reused" or "failed"
    error: str | None = None


def stop_reason(run_dir: Path) -> str | None:
    """How the run's last `fit()` ended (its result.json), or None when none ended."""
    try:
        return json.loads((run_dir / "result.json").read_text()).get("stop_reason")
    except (OSError, json.JSONDecodeError):
        return None


def finished(run_dir: Path) -> bool:
    """The run's last `fit()` ended by spending its budget (not a signal, a crash or a stop by rollback)."""
    return (stop_reason(run_dir) or "").startswith(FINISHED)


def _pump(stream, sinks: list[Callable[[bytes], None]]) -> None:
    """Copy the child's stderr as it comes (its progress bar included) to every sink."""
    for chunk in iter(lambda: os.read(stream.fileno(), 4096), b""):
        for sink in sinks:
            sink(chunk)


def _error_line(log: bytes) -> str:
    """The line that says why a run failed: lmforge's own error, else the last line of a traceback."""
    lines = [ln.strip() for ln in log.decode("utf-8", "replace").replace("\r", "\n").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("lmforge: error:"):
            return " ".join([line[len("lmforge: error:"):].strip(), *lines[i + 1:i + 3]])[:500]
    return (lines[-1] if lines else "no output")[:500]


def _wait(proc: subprocess.Popen) -> int:
    """proc.wait(), waking twice a second: a process-directed SIGINT may be delivered to the pump thread, and Python
    runs its handler only in the main thread, which a plain blocking wait would keep asleep until the run ends."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _interrupted(planned: PlannedRun) -> CompareInterrupted:
    return CompareInterrupted(f"interrupted during {planned.name} (seed {planned.seed}); it saved, and the "
                              "next compare with the same arguments resumes it")


def train_planned(planned: PlannedRun, runs_dir: Path, trust_code: bool = False, echo: bool = True) -> RunOutcome:
    """Reuse the run if it finished, else train it (resuming what an interrupted compare left)."""
    run_dir = runs_dir / planned.key
    if finished(run_dir):
        return RunOutcome(planned, run_dir, "reused")
    run_dir.mkdir(parents=True, exist_ok=True)
    preset_file = run_dir / PRESET_FILE
    preset_file.write_text(json.dumps(planned.raw, indent=2) + "\n")
    cmd = [sys.executable, "-m", "lmforge", "train", str(preset_file), "--run-dir", str(run_dir)]
    if trust_code:
        cmd.append("--trust-code")
    cmd += ["--train.progress_bar", "true" if echo and sys.stderr.isatty() else "false"]
    tail = bytearray()

    def keep(chunk: bytes) -> None:
        tail.extend(chunk)
        del tail[:-20000]

    sinks = [keep]
    if echo:
        sinks.append(lambda chunk: (sys.stderr.buffer.write(chunk), sys.stderr.buffer.flush()))
    with open(run_dir / LOG_FILE, "ab") as log:
        sinks.append(log.write)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE)
        pump = threading.Thread(target=_pump, args=(proc.stderr, sinks), daemon=True)
        pump.start()
        try:
            code = _wait(proc)
        except KeyboardInterrupt:  # a terminal's Ctrl-C reached the run too; a `kill -INT` of compare alone did not
            proc.send_signal(signal.SIGTERM)  # either way a graceful stop (a second SIGINT would make it stop at once)
            proc.wait()
            pump.join()
            raise _interrupted(planned) from None
        pump.join()
    if code == 0 and stop_reason(run_dir) == "signal SIGINT":  # the run took the terminal's Ctrl-C before compare did
        raise _interrupted(planned)
    if code != 0:
        return RunOutcome(planned, run_dir, "failed", f"exit {code}: {_error_line(bytes(tail))}")
    if not finished(run_dir):
        return RunOutcome(planned, run_dir, "failed", f"stopped before its budget: {stop_reason(run_dir) or '?'}")
    return RunOutcome(planned, run_dir, "trained")
