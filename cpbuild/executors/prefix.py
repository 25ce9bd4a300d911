"""The prefix executor: each task as its own job behind a job-scheduler command.

``@task(job_prefix=["srun", "-p", "gpu"])`` or ``[prefixes] gpu = "srun -p gpu"`` runs the task as
``PREFIX python -m cpbuild.worker run JOB OUTCOME``. The job and its outcome are files in the
cache folder, so the folder must be on a file system the compute nodes share (as it is on
clusters with a shared home or project file system), and the same Python environment must be
installed there. The command's stdout, stderr and exit status are captured; a job that exits
without writing its outcome is a failure that shows the scheduler's own output.

Concurrency is bounded by ``-j`` (and queue limits): each running job costs a thread here that
waits for its command to finish, the same model as ``make -j`` with ``srun`` in recipes.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cpbuild.executors.procgroup import describe_exit, kill_group
from cpbuild.executors.shipping import dumps_job, prepare, worker_init
from cpbuild.runner import Job, Outcome


class PrefixExecutor:
    name = "prefix"
    in_process = False  # task code runs in worker processes only

    def __init__(self, jobs: int, root: Path, folder: Path) -> None:
        self.root = root
        self.folder = folder
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cpbuild-prefix")
        self._processes: set[subprocess.Popen[bytes]] = set()

    def submit(self, job: Job) -> Future[Outcome]:
        return self._pool.submit(self._run, job)

    def _run(self, job: Job) -> Outcome:
        prefix = job.options.get("job_prefix") or []
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"{uuid.uuid4().hex}"
        job_file, outcome_file = Path(f"{stem}.job"), Path(f"{stem}.outcome")
        try:
            payload = dumps_job(prepare(job), self.root)
        except Exception as error:
            return Outcome(False, error=f"{job.task_id} cannot be sent as a job: {type(error).__name__}: {error}")
        with open(job_file, "wb") as stream:
            pickle.dump((worker_init(), payload), stream, protocol=5)
        command = [*prefix, sys.executable, "-m", "cpbuild.worker", "run", str(job_file), str(outcome_file)]
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            job_file.unlink(missing_ok=True)
            return Outcome(False, error=f"cannot start the job command {prefix[0] if prefix else sys.executable!r}: {error.strerror}")
        self._processes.add(process)
        try:
            stdout, stderr = process.communicate(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            stdout, stderr = process.communicate()
            return Outcome(
                False,
                error=f"{job.task_id} timed out after {job.timeout:g}s; its job's process group was killed",
                stdout=stdout.decode(errors="replace"),
                stderr=stderr.decode(errors="replace"),
                duration=time.monotonic() - start,
            )
        finally:
            self._processes.discard(process)
            job_file.unlink(missing_ok=True)
        text_out, text_err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        try:
            with open(outcome_file, "rb") as stream:
                outcome: Outcome = pickle.load(stream)
        except FileNotFoundError:
            return Outcome(
                False,
                error=f"the job for {job.task_id} ({' '.join(command[:len(prefix) + 1])} ...) ended "
                f"with {describe_exit(process.returncode)} without reporting an outcome",
                stdout=text_out,
                stderr=text_err,
                duration=time.monotonic() - start,
            )
        finally:
            outcome_file.unlink(missing_ok=True)
        outcome.stdout = text_out + outcome.stdout
        outcome.stderr = text_err + outcome.stderr
        return outcome

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for process in list(self._processes):
                kill_group(process, grace=0.5)
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def create(config: Any, jobs: int) -> PrefixExecutor:
    return PrefixExecutor(jobs, config.root, config.cache_path / "jobs")
