"""The dask executor: each task is one dask task on a ``distributed`` cluster.

Jobs are shipped as the process executor ships them (``cpbuild.executors.shipping``): pickled
with cloudpickle, the project's modules by value, so a worker runs a task without the project
on its ``sys.path``. The pickled job goes to the worker as bytes and ``run_payload`` (in this
module, which workers import) unpickles and runs it. Handing dask the ``Job`` object itself is
not robust: dask tries plain pickle first, which pickles task functions by reference to module
names that do not exist on the workers.

Values are read from and written to the object store by the workers, as with the process
executor, when the storage says it is ``shareable`` (the local storage is: the cache folder must
then be on a file system the workers share); otherwise upstream values are resolved here and
the value bytes come back in the ``Outcome``.

Every submitted job resolves: a task's own exception is in its ``Outcome``; an error inside
dask, a worker that died (``KilledWorker``: the local cluster allows no retry, so the task that
killed its worker fails as with the process executor), a cancelled future or a lost scheduler
connection become ``Outcome(False, error=...)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
import threading
import uuid
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cpbuild.errors import UsageError
from cpbuild.executors.shipping import dumps_job, prepare
from cpbuild.runner import Job, Outcome, run_job

#: Seconds to wait for the client and cluster to close. Connecting waits as long as dask's
#: ``distributed.comm.timeouts.connect`` (30 s; ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``).
CLOSE_TIMEOUT = 10
#: Seconds to wait for a worker of the local cluster to be replaced after a crash or timeout.
RESTART_TIMEOUT = 30


@dataclass
class _Pending:
    task_id: str
    future: Future[Outcome]
    dask_future: Any = None
    timer: threading.Timer | None = None


class DaskExecutor:
    """Runs jobs on a ``distributed.Client``: connected to ``address``, or to a
    ``LocalCluster`` of ``workers`` (default ``jobs``) single-threaded worker processes that
    lives as long as the executor."""

    name = "dask"

    def __init__(
        self, jobs: int, root: Path, address: str | None = None, workers: int | None = None
    ) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as error:
            raise UsageError(
                f"the dask executor needs dask.distributed ({error}); install it with "
                "pip install 'dask[distributed]'"
            ) from None
        self.root = Path(root)
        self.address = address
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._closed = False
        self._cluster: Any = None
        self._workers = workers or jobs
        # What run_payload needs on the worker: the project's import path and working folder.
        self._init = {"root": str(self.root), "cwd": str(self.root), "sys_path": list(sys.path)}
        if address:
            try:
                self.client = Client(address, set_as_default=False)
            except Exception as error:  # OSError / TimeoutError: nobody answers there
                raise UsageError(
                    f"cannot connect to the dask scheduler at {address}: {error}"
                ) from None
            return
        try:
            self._cluster = LocalCluster(
                n_workers=self._workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=0,  # no per-worker memory limit, as with the process executor
                silence_logs=logging.CRITICAL,  # failures are reported per task instead
                scheduler_kwargs={"allowed_failures": 0},  # a task that kills its worker fails
            )
            self.client = Client(self._cluster, set_as_default=False)
        except Exception as error:
            if self._cluster is not None:
                self._cluster.close()
            raise UsageError(f"cannot start a local dask cluster: {type(error).__name__}: {error}") from None

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        if self._closed:
            future.set_result(Outcome(False, error=f"{job.task_id} was not started: the dask executor is shut down"))
            return future
        try:
            payload = dumps_job(prepare(job), self.root)
        except Exception as error:
            future.set_result(Outcome(
                False,
                error=f"{job.task_id} cannot be sent to a dask worker: {type(error).__name__}: {error}",
            ))
            return future
        key = f"cpbuild-{job.task_id}-{uuid.uuid4().hex}"
        pending = _Pending(job.task_id, future)
        with self._lock:
            self._pending[key] = pending
        try:
            pending.dask_future = self.client.submit(run_payload, payload, self._init, key=key, pure=False)
            pending.dask_future.add_done_callback(partial(self._done, key))
        except Exception as error:
            self._resolve(key, Outcome(
                False,
                error=f"{job.task_id} could not be submitted to the dask cluster: {type(error).__name__}: {error}",
            ))
            return future
        if job.timeout is not None:
            timer = threading.Timer(job.timeout, self._timed_out, args=(key, job.timeout))
            timer.daemon = True
            pending.timer = timer
            timer.start()
            if future.done():  # finished before the timer was set
                timer.cancel()
        return future

    # -- results -------------------------------------------------------------------------------

    def _done(self, key: str, dask_future: Any) -> None:
        """Dask's done callback (in dask's callback thread): turn the future into an Outcome."""
        with self._lock:
            pending = self._pending.get(key)
        if pending is None:
            return
        outcome, killed = _outcome(pending.task_id, dask_future)
        if killed and self._cluster is not None:
            # Dask assigns a task to a busy worker while another one restarts, and such a
            # task dies with the busy worker's next crash or restart. Hand the slot back only
            # when the nanny has replaced the dead worker (in a thread: dask runs all done
            # callbacks in one thread).
            threading.Thread(
                target=self._resolve_with_workers, args=(key, outcome), daemon=True,
                name="cpbuild-dask-restart",
            ).start()
        else:
            self._resolve(key, outcome)

    def _resolve_with_workers(self, key: str, outcome: Outcome) -> None:
        try:
            self.client.wait_for_workers(self._workers, timeout=RESTART_TIMEOUT)
        except Exception:  # timed out or closed: resolve anyway, the build must go on
            pass
        self._resolve(key, outcome)

    def _resolve(self, key: str, outcome: Outcome) -> None:
        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            pending.future.set_result(outcome)
        except InvalidStateError:
            pass

    def _timed_out(self, key: str, seconds: float) -> None:
        with self._lock:
            pending = self._pending.pop(key, None)  # from now on, dask's callback is ignored
        if pending is None:
            return
        worker = self._worker_of(key)
        if self._cluster is not None and worker:
            # A running thread cannot be stopped: restart the worker process that runs it (our
            # own cluster only: workers of a shared cluster are not ours to restart). The
            # cpbuild future is resolved only afterwards, so no next task lands there meanwhile.
            try:
                self.client.restart_workers([worker], timeout=RESTART_TIMEOUT, raise_for_error=False)
            except Exception:
                pass
            what = f"its dask worker {worker} was restarted"
        else:
            what = "its dask task was cancelled (a running task runs on until it returns)"
        try:
            self.client.cancel([pending.dask_future], force=True)
        except Exception:
            pass
        try:
            pending.future.set_result(Outcome(
                False, error=f"{pending.task_id} timed out after {seconds:g}s; {what}", worker=worker or "",
            ))
        except InvalidStateError:
            pass

    def _worker_of(self, key: str) -> str | None:
        try:
            for worker, keys in self.client.processing().items():
                if key in keys:
                    return str(worker)
        except Exception:
            pass
        return None

    # -- shutting down -------------------------------------------------------------------------

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending.items())
        if cancel:
            futures = [p.dask_future for _, p in pending if p.dask_future is not None]
            if futures:
                try:
                    self.client.cancel(futures, force=True)
                except Exception:
                    pass
            for key, p in pending:
                self._resolve(key, Outcome(False, error=f"{p.task_id} was stopped"))
            if self._cluster is not None:
                self._kill_local_workers()
        elif pending:
            wait_futures([p.future for _, p in pending])
        try:
            self.client.close(timeout=CLOSE_TIMEOUT)
        except Exception:
            pass
        if self._cluster is not None:
            try:
                self._cluster.close(timeout=CLOSE_TIMEOUT)
            except Exception:
                pass
        with self._lock:
            left = list(self._pending.items())
        for key, p in left:  # a callback that never came must not leave a build waiting
            self._resolve(key, Outcome(False, error=f"{p.task_id} was stopped: the dask client closed"))


    def _kill_local_workers(self) -> None:
        """Stop the local cluster's worker processes at once: closing waits seconds for each
        busy worker otherwise, and their tasks' results are not wanted any more."""
        try:
            pids = [getattr(ws, "pid", None) for ws in list(self._cluster.scheduler.workers.values())]
        except Exception:
            return
        for pid in pids:
            if isinstance(pid, int) and pid > 0 and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def _outcome(task_id: str, dask_future: Any) -> tuple[Outcome, bool]:
    """The Outcome of a settled dask future, and whether its worker died; never raises."""
    try:
        if dask_future.status == "finished":
            result = dask_future.result()
            if isinstance(result, Outcome):
                return result, False
            error = f"the dask task of {task_id} returned {type(result).__name__}, not an Outcome"
            return Outcome(False, error=error), False
        if dask_future.cancelled():
            reason = getattr(getattr(dask_future, "_state", None), "exception", None)
            error = f"{task_id} was cancelled on the dask cluster" + (f": {reason}" if reason else "")
            return Outcome(False, error=error), False
        exception = dask_future.exception()
    except Exception as fetch_error:
        error = (
            f"the outcome of {task_id} could not be fetched from the dask cluster: "
            f"{type(fetch_error).__name__}: {fetch_error}"
        )
        return Outcome(False, error=error), False
    if exception is None:
        error = f"the dask task of {task_id} ended with status {dask_future.status!r}"
        return Outcome(False, error=error), False
    if type(exception).__name__ == "KilledWorker":
        last = str(getattr(getattr(exception, "last_worker", None), "address", "") or "")
        error = (
            f"the dask worker running {task_id} died{f' ({last})' if last else ''} "
            "(dask: KilledWorker; see https://distributed.dask.org/en/stable/killed.html)"
        )
        return Outcome(False, error=error, worker=last), True
    error = f"{task_id} failed inside dask: {type(exception).__name__}: {exception}"
    return Outcome(False, error=error), False


# -- the worker side ---------------------------------------------------------------------------


def run_payload(payload: bytes, init: dict[str, Any]) -> Outcome:
    """Run one pickled job where dask put it; the function every dask task calls.

    Never raises for a task's failure (the Outcome says), so a dask-level error always means
    that the job could not be run at all.
    """
    address = _worker_address()
    _setup(init)
    try:
        job = pickle.loads(payload)
    except Exception as error:  # e.g. a library the task needs is not installed on the worker
        outcome = Outcome(
            False,
            error=f"the job could not be unpickled on the dask worker "
            f"{address or socket.gethostname()}: {error!r}",
        )
    else:
        outcome = run_job(job)
    if address:
        outcome.worker = address
    return outcome


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except Exception:  # not inside a dask worker (called directly)
        return ""


def _setup(init: dict[str, Any]) -> None:
    """Best effort, as far as this machine has the project: its folders on ``sys.path`` (for
    imports that tasks make when they run) and the project root as the working directory."""
    root = init.get("root") or ""
    entries = [
        entry
        for entry in init.get("sys_path", ())
        if entry and entry not in sys.path and _inside(entry, root) and os.path.isdir(entry)
    ]
    sys.path[:0] = entries
    cwd = init.get("cwd")
    try:
        if cwd and os.getcwd() != cwd and os.path.isdir(cwd):
            os.chdir(cwd)
    except OSError:  # the worker's own folder is gone; stay where we are
        pass


def _inside(entry: str, root: str) -> bool:
    if not root:
        return False
    entry, root = os.path.abspath(entry), os.path.abspath(root)
    return entry == root or entry.startswith(root.rstrip(os.sep) + os.sep)
