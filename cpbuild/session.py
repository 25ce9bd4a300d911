"""A ``Session`` carries one invocation's configuration, hooks, backends, state and graph.

No module keeps global mutable state; everything a build needs hangs off the session, which the
CLI (or watch mode, once per cycle) drives: collect -> graph -> select -> build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

import pluggy

from cpbuild import graphcache, loader, project
from cpbuild.collect import find_files
from cpbuild.config import Config
from cpbuild.environment import Environment
from cpbuild.errors import CollectionError, UsageError
from cpbuild.fingerprint import CodeTracker
from cpbuild.graph import Graph
from cpbuild.model import Task
from cpbuild.rebuilder import FileDigests, Rebuilder, argument_parts
from cpbuild.scheduler import BuildOptions, BuildSummary, Scheduler
from cpbuild.state import State


class Session:
    def __init__(
        self,
        config: Config,
        options: argparse.Namespace,
        pm: pluggy.PluginManager,
        cwd: Path,
        environment: Environment | None = None,
    ) -> None:
        self.config = config
        self.environment = environment or Environment(None)
        self.options = options
        self.pm = pm
        self.hook = pm.hook
        self.cwd = cwd
        self.mode = "build"  # build | dry-run | list | why | clean: what the reporter shows
        self.hasher = self.hook.cpbuild_make_hasher(config=config)
        self.serializer = self.hook.cpbuild_make_serializer(config=config)
        if self.hasher is None or self.serializer is None:
            missing = "hasher" if self.hasher is None else "serializer"
            raise UsageError(f"no plugin provides a {missing} (was the built-in one blocked with -p no:?)")
        self.storage = self._make_storage(config.storage)
        self.executor_name = config.executor or ("inline" if config.jobs == 1 else "process")
        self.state: State | None = None
        self.graph: Graph | None = None
        self.rebuilder: Rebuilder | None = None
        self.last_summary: BuildSummary | None = None
        self._files: FileDigests | None = None
        self._code: CodeTracker | None = None
        self.tasks_ran = False  # set by the scheduler when task code runs in this process
        self.from_cache = False  # the graph came from the graph cache: no task module imported
        self.graph_cache: graphcache.Pending | None = None  # to write once the build is over
        self._logs: set[str] | None = None
        self.executors: dict[str, Any] = {}
        #: Set for a build that runs tasks: a full collection then starts the worker pool first.
        self.start_workers = False

    # -- backends -----------------------------------------------------------------------------

    def _make_storage(self, name: str) -> Any:
        storage = self.hook.cpbuild_make_storage(name=name, config=self.config, hasher=self.hasher)
        if storage is None:
            known = sorted(n for names in self.hook.cpbuild_storage_names() for n in names)
            raise UsageError(f"unknown storage '{name}' (available: {', '.join(known)})")
        return storage

    def executor(self, name: str, jobs: int) -> Any:
        """The executor ``name`` of this build, made on first use; the scheduler shuts down
        and forgets every executor in ``executors`` when the build is over."""
        executor = self.executors.get(name)
        if executor is None:
            executor = self.hook.cpbuild_make_executor(name=name, config=self.config, jobs=jobs)
            if executor is None:
                known = sorted(n for names in self.hook.cpbuild_executor_names() for n in names)
                raise UsageError(f"unknown executor '{name}' (available: {', '.join(known)})")
            self.executors[name] = executor
        return executor

    def _start_workers(self) -> None:
        """Start the process pool before the task modules are imported, when this build will
        run tasks on it: its workers can then be forked (see ``cpbuild.executors.process``).
        Only the built-in process executor: making another may mean connecting to a cluster."""
        if self.start_workers and self.executor_name == "process" and self.config.jobs > 1:
            start = getattr(self.executor("process", self.config.jobs), "start", None)
            if start is not None:
                # A probe of the cached graph may have opened the storage (LocalStorage.before_fork).
                before_fork = getattr(self.storage, "before_fork", None)
                if before_fork is not None:
                    before_fork()
                start()

    def executor_for(self, task: Task) -> str:
        """A task's own executor; else ``prefix`` when it has a job prefix (its own or its
        queue's); else the session's."""
        if task.options.executor:
            return task.options.executor
        if task.options.job_prefix is not None or (task.options.queue or "") in self.config.prefixes:
            return "prefix"
        return self.executor_name

    def check_executor(self, ids: list[str]) -> None:
        """Fail before building when an executor the selection needs does not exist."""
        assert self.graph is not None
        known = {n for names in self.hook.cpbuild_executor_names() for n in names}
        unknown = sorted({self.executor_for(self.graph.tasks[i]) for i in ids} - known)
        if unknown:
            raise UsageError(
                f"unknown executor '{unknown[0]}' (available: {', '.join(sorted(known))})"
            )

    def log_path(self, task: Task) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in task.id)
        return self.config.cache_path / "logs" / f"{safe}.log"

    def write_log(self, task: Task, text: str | None) -> None:
        """Keep the last run's output of a task (``cpbuild --log TASK``), written atomically.

        ``None`` (a run that printed nothing and succeeded at once) removes an older log
        instead: creating a file per task is a large part of a full build of small tasks.
        """
        if self._logs is None:  # the logs that exist, listed once per session
            try:
                self._logs = set(os.listdir(self.config.cache_path / "logs"))
            except FileNotFoundError:
                self._logs = set()
        if text is None and not self._logs:  # the common case of a full build: nothing to do
            return
        path = self.log_path(task)
        if text is None:
            if path.name in self._logs:
                self._logs.discard(path.name)
                path.unlink(missing_ok=True)
            return
        self._logs.add(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def open_state(self) -> State:
        if self.state is None:
            self.state = State(self.config.cache_path)
        return self.state

    # -- collection ---------------------------------------------------------------------------

    def project_packages(self) -> frozenset[str]:
        """Top-level packages of the project (also under ``src/``): their code is project code
        even where an installation put it in site-packages."""
        names = set()
        for folder in (self.config.root, self.config.root / "src"):
            if folder.is_dir():
                names.update(p.parent.name for p in folder.glob("*/__init__.py"))
        return frozenset(names)

    def code_tracker(self) -> CodeTracker:
        """The code analysis of this collection (one per session: modules are not reloaded)."""
        if self._code is None:
            self._code = CodeTracker(
                self.config.root,
                self.project_packages(),
                self.open_state().code,
                self.environment.library_version,
            )
        return self._code

    def collect(self, analyse: bool = True, use_cache: bool = False) -> Graph:
        """Import the task files and build the graph.

        With ``analyse``, each module's task code is analysed right after it is imported, so
        that a key describes the code that was imported and will run, even when a file is
        edited while the build runs (the next build then sees the edit). With ``use_cache``,
        the graph cache (``cpbuild.graphcache``) is used when it is valid: no module is
        imported, and ``from_cache`` says so; a full collection then writes a new cache.
        """
        root = self.config.root
        project.add_import_paths(root)
        loader.install(str(root))
        patterns = sorted({p for ps in self.hook.cpbuild_collect_patterns() for p in ps})
        files = find_files(root, self.config.paths, patterns, skip=[self.config.cache_path])
        cacheable = use_cache and analyse and graphcache.eligible(self.pm)
        if cacheable:
            cached = graphcache.load(self, files)
            if cached is not None:
                self.graph = Graph(cached, root)
                self.from_cache = True
                return self.graph
        self.from_cache = False
        self._start_workers()
        recorder = graphcache.Recorder()
        with recorder.recording() if cacheable else contextlib.nullcontext(recorder):
            tasks, errors = self._import_tasks(files, analyse)
        if errors:
            raise CollectionError(errors[0], errors)
        self.hook.cpbuild_collection_finish(session=self, tasks=tasks)
        self.graph = Graph(tasks, root)
        self.graph_cache = graphcache.pending(self, files, recorder) if cacheable else None
        return self.graph

    def save_graph_cache(self) -> None:
        """After the build: write the graph cache noted at collection, if any."""
        if self.graph_cache is not None and self.graph is not None:
            graphcache.save(self, self.graph_cache)
            self.graph_cache = None

    def _import_tasks(self, files: list[Path], analyse: bool) -> tuple[list[Task], list[str]]:
        tasks: list[Task] = []
        errors: list[str] = []
        for path in files:
            try:
                for result in self.hook.cpbuild_collect_file(session=self, path=path):
                    if result:
                        tasks.extend(result)
                        if analyse:
                            code = self.code_tracker()
                            for task in result:
                                code.task_code(task.function)
            except CollectionError as error:
                errors.extend(error.errors)
        return tasks, errors

    def argument_text(self, value: Any) -> list[str]:
        """The canonical form of a plain argument (for the graph cache)."""
        return argument_parts(value, self.config.root, self.serializer, self.hasher)

    # -- selection ----------------------------------------------------------------------------

    def targets(self, texts: list[str], keyword: str | None, marker: str | None) -> list[str]:
        """Resolve command-line targets (or the default targets) and filter by -k/-m."""
        assert self.graph is not None
        if texts:
            ids: list[str] = []
            for text in texts:
                ids.extend(i for i in self.graph.resolve_target(text, self.cwd) if i not in ids)
        elif keyword or marker:
            ids = list(self.graph.tasks)
        else:
            ids = self.graph.default_targets(self.config.default, self.cwd)
        return self.graph.filter(ids, keyword, marker)

    def selection(self, targets: list[str]) -> list[str]:
        """The targets and their upstream; missing inputs are collection errors."""
        assert self.graph is not None
        ids = self.graph.with_upstream(targets)
        files = self.file_digests()
        errors = self.graph.missing_inputs(
            ids, lambda path: files.digest(path) is not None or os.path.exists(path)
        )
        if errors:
            raise CollectionError(errors[0], errors)
        return ids

    # -- building -----------------------------------------------------------------------------

    def file_digests(self) -> FileDigests:
        """The digests of this build's files; what selection learns, the build reuses."""
        if self._files is None:
            self._files = FileDigests(self.open_state().files, self.hasher)
        return self._files

    def build(self, ids: list[str], options: BuildOptions) -> BuildSummary:
        state = self.open_state()
        files, self._files = self.file_digests(), None  # the next build starts afresh
        self.rebuilder = Rebuilder(
            self.config.root,
            state,
            files,
            None if self.from_cache else self.code_tracker(),  # cached tasks carry their code keys
            self.serializer,
            self.hasher,
            self.hook.cpbuild_key_extras,
        )
        return Scheduler(self, ids, options).run()

    def close(self) -> None:
        for executor in self.executors.values():  # started for a build that did not happen
            executor.shutdown(cancel=True)
        self.executors.clear()
        if self.state is not None:
            self.state.close()
            self.state = None
