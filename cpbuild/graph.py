"""The task graph: edges from values, files and ``after``; targets; selection (DESIGN §2, §6).

Plain dictionaries keyed by task id, in collection order. networkx is not needed to build or
walk the graph (a no-op build must not pay for importing it); it is used to export the graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cpbuild.errors import CollectionError, UsageError
from cpbuild.expression import compile_expression
from cpbuild.model import ParamKind, Task
from cpbuild.project import relative


class Graph:
    """Tasks and their dependencies, resolved; raises ``CollectionError`` listing every problem."""

    def __init__(self, tasks: Iterable[Task], root: Path) -> None:
        self.root = root
        self._root = str(root)
        self.tasks: dict[str, Task] = {}
        self.by_name: dict[str, list[str]] = {}
        self.by_base: dict[str, list[str]] = {}
        self.by_file: dict[Path, list[str]] = {}
        self.producers: dict[str, str] = {}  # absolute path -> task id
        self.value_deps: dict[str, dict[str, str]] = {}
        self.args: dict[str, dict[str, Any]] = {}
        self.upstream: dict[str, list[str]] = {}
        self.downstream: dict[str, list[str]] = {}
        self.order: dict[str, int] = {}
        errors: list[str] = []
        for task in tasks:
            if task.id in self.tasks:
                errors.append(f"{task.id}: two tasks have this id; give them distinct @task(id=...)")
                continue
            self.order[task.id] = len(self.tasks)
            self.tasks[task.id] = task
            self.by_name.setdefault(task.name, []).append(task.id)
            self.by_base.setdefault(task.base_name, []).append(task.id)
            self.by_file.setdefault(task.path, []).append(task.id)
            for product in task.product_files:
                other = self.producers.setdefault(product, task.id)
                if other != task.id:
                    errors.append(
                        f"{self.rel(product)} is a product of two tasks: {other} and {task.id}"
                    )
        for task in self.tasks.values():
            errors.extend(self._resolve(task))
        if not errors:
            errors.extend(self._cycles())
        if errors:
            raise CollectionError(errors[0], errors)

    def rel(self, path: str | Path) -> str:
        """A path relative to the project root (as users write it), else absolute."""
        return relative(os.fspath(path), self._root)

    # -- resolution --------------------------------------------------------------------------

    def lookup(self, text: str, near: Task | None = None) -> list[str]:
        """Task ids a name refers to: an id, a name, or a base name (all its instances);
        names in ``near``'s module win over names elsewhere, as DESIGN §3 rule 2 says."""
        if text in self.tasks:
            return [text]
        for table in (self.by_name, self.by_base):
            ids = [i for i in table.get(text, ()) if near is None or i != near.id]
            if not ids:
                continue
            if near is not None:
                local = [i for i in ids if self.tasks[i].path == near.path]
                if local:
                    return local
            return ids
        return []

    def close_names(self, text: str) -> list[str]:
        candidates = dict.fromkeys([*self.by_name, *self.by_base, *self.tasks])
        import difflib  # only for error messages

        return difflib.get_close_matches(text, list(candidates), n=3)

    def _resolve(self, task: Task) -> list[str]:
        errors: list[str] = []
        deps: dict[str, str] = {}
        args: dict[str, Any] = {}
        upstream: list[str] = []
        seen = {task.id}  # a set beside the list: a task may have thousands of upstream tasks

        def add_edge(up: str) -> None:
            if up not in seen:
                seen.add(up)
                upstream.append(up)
                self.downstream.setdefault(up, []).append(task.id)

        for param in task.params:
            if param.kind is ParamKind.ARG:
                args[param.name] = param.value
            elif param.kind in (ParamKind.VALUE, ParamKind.NAME):
                ids = self.lookup(param.value if param.kind is ParamKind.VALUE else param.name, task)
                if len(ids) == 1:
                    deps[param.name] = ids[0]
                    add_edge(ids[0])
                elif len(ids) > 1:
                    errors.append(
                        f"{task.id}: parameter '{param.name}' matches several tasks: "
                        f"{', '.join(self.tasks[i].name for i in ids)}; choose one with "
                        f"Annotated[..., Needs(\"{self.tasks[ids[0]].name}\")]"
                    )
                elif param.kind is ParamKind.NAME and param.has_default:
                    args[param.name] = param.value
                else:
                    wanted = param.value if param.kind is ParamKind.VALUE else param.name
                    close = self.close_names(wanted)
                    hint = f"; nearest task names: {', '.join(close)}" if close else ""
                    what = (
                        f"Needs(\"{wanted}\") names no task"
                        if param.kind is ParamKind.VALUE
                        else "is not an input (Path default), a product, a task's value or an "
                        "argument with a default"
                    )
                    errors.append(f"{task.id}: parameter '{param.name}' {what}{hint}")
        for path in task.input_files:
            producer = self.producers.get(path)
            if producer is not None:
                add_edge(producer)
        for target in task.options.after:
            ids = self.lookup(target, task)
            if not ids:
                close = self.close_names(target)
                hint = f"; nearest task names: {', '.join(close)}" if close else ""
                errors.append(f"{task.id}: after={target!r} names no task{hint}")
            for up in ids:
                add_edge(up)
        self.value_deps[task.id] = deps
        self.args[task.id] = args
        self.upstream[task.id] = upstream
        return errors

    def _cycles(self) -> list[str]:
        """Kahn's algorithm: if some task never becomes ready, there is a cycle; only then is
        one found and named (graphlib does that search up front, at ten times the cost)."""
        pending = {i: len(up) for i, up in self.upstream.items()}
        ready = [i for i, n in pending.items() if n == 0]
        settled = 0
        while ready:
            current = ready.pop()
            settled += 1
            for down in self.downstream.get(current, ()):
                pending[down] -= 1
                if pending[down] == 0:
                    ready.append(down)
        if settled == len(pending):
            return []
        cycle = self._find_cycle({i for i, n in pending.items() if n > 0})
        return ["dependency cycle: " + " -> ".join(self.tasks[i].name for i in cycle)]

    def _find_cycle(self, stuck: set[str]) -> list[str]:
        """Walk upstream among tasks that never became ready until a task repeats."""
        current = next(iter(sorted(stuck, key=self.order.__getitem__)))
        path: list[str] = []
        seen: dict[str, int] = {}
        while current not in seen:
            seen[current] = len(path)
            path.append(current)
            current = next(u for u in self.upstream[current] if u in stuck)
        cycle = path[seen[current] :] + [current]
        return cycle[::-1]  # upstream first, as the edges run

    # -- selection ----------------------------------------------------------------------------

    def resolve_target(self, text: str, cwd: Path) -> list[str]:
        """Task ids for one command-line target: an id, a name, a product path or a task file
        (or folder of task files). Unknown targets are usage errors with suggestions."""
        ids = self.lookup(text)
        if ids:
            modules = {self.tasks[i].path for i in ids}
            if len(modules) > 1 and text not in self.by_name:
                raise UsageError(
                    f"target '{text}' is ambiguous: {', '.join(sorted(ids))}; use a task id"
                )
            if len(ids) > 1 and text in self.by_name:
                raise UsageError(
                    f"target '{text}' is ambiguous: {', '.join(sorted(ids))}; use a task id"
                )
            return ids
        for base in (cwd, self.root):
            path = os.path.normpath(os.path.join(base, text))
            if path in self.producers:
                return [self.producers[path]]
            if Path(path) in self.by_file:
                return list(self.by_file[Path(path)])
            if os.path.isdir(path):
                inside = [i for i, t in self.tasks.items() if t.path.is_relative_to(path)]
                if inside:
                    return inside
        close = self.close_names(text)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown target '{text}'{hint} (cpbuild --list shows all tasks)")

    def default_targets(self, configured: list[str] | None, cwd: Path) -> list[str]:
        """``default = [...]`` from the configuration plus ``@task(default=True)`` tasks; without
        either, every task but those declared ``default=False``."""
        explicit = [i for i, t in self.tasks.items() if t.options.default]
        if configured is None and not explicit:
            return [i for i, t in self.tasks.items() if t.options.default is not False]
        ids: list[str] = []
        for target in configured or ():
            ids.extend(self.resolve_target(target, cwd))
        return ids + explicit

    def filter(self, ids: list[str], keyword: str | None, marker: str | None) -> list[str]:
        if keyword:
            match_k = compile_expression(keyword, "-k")
            ids = [i for i in ids if match_k(lambda word, i=i: word.lower() in i.lower())]
        if marker:
            match_m = compile_expression(marker, "-m")
            ids = [i for i in ids if match_m(lambda word, i=i: word in self.tasks[i].markers)]
        return ids

    def with_upstream(self, ids: Iterable[str]) -> list[str]:
        """The targets and everything they depend on, in collection order."""
        selected: set[str] = set()
        stack = list(ids)
        while stack:
            current = stack.pop()
            if current in selected:
                continue
            selected.add(current)
            stack.extend(self.upstream[current])
        return sorted(selected, key=self.order.__getitem__)

    def missing_inputs(
        self, ids: Iterable[str], exists: Callable[[str], bool] = os.path.exists
    ) -> list[str]:
        """Inputs of the selected tasks that neither exist nor are produced by a task."""
        errors = []
        for task_id in ids:
            for path in self.tasks[task_id].input_files:
                if path not in self.producers and not exists(path):
                    errors.append(
                        f"{task_id}: input {self.rel(path)} does not exist and no task produces it"
                    )
        return errors
