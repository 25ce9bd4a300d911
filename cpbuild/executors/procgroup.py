"""Process groups of tasks: stopping them and saying how they ended.

Every task process (a pool worker, a job behind a scheduler prefix) runs in a session of its
own, so that stopping it also stops whatever it started (a compiler, a simulation).
"""

from __future__ import annotations

import os
import signal
import subprocess

#: Seconds between SIGTERM and SIGKILL when stopping a worker's process group.
KILL_GRACE = 2.0


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def kill_group(process: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
