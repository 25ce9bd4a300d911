"""The rebuilder: a task's key, and whether the task must run (DESIGN §5).

The key is the digest of the task's *parts*: code items, canonical arguments, input file
digests, upstream value digests, declared products, plugin extras and the Python version. Every
record keeps its parts, so a stale task's reasons are the differences between the parts it had
when last built and the parts it has now ("code of `clean_row` in helpers.py changed").
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpbuild.canonical import NotSimple, canonical, short_repr
from cpbuild.fingerprint import CodeTracker
from cpbuild.model import CachedArgument, Record, StatEntry, Task
from cpbuild.project import RACY_NS

if TYPE_CHECKING:
    from cpbuild.state import State

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"



def argument_parts(value: Any, root: Path, serializer: Any, hasher: Any) -> list[str]:
    """[canonical text or digest, how to show it] of a plain argument."""
    if isinstance(value, CachedArgument):
        return list(value)  # from the graph cache: already in this form
    try:
        text = canonical(value, root)
    except NotSimple:
        try:
            data = serializer.dumps(value)
        except Exception as error:
            raise TaskKeyError(
                f"an argument of type {type(value).__qualname__} has no canonical form and "
                f"cannot be pickled: {type(error).__name__}: {error}"
            ) from error
        text = "pickle:" + hasher.bytes_digest(data)
    if len(text) > 200:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return [text, short_repr(value)]


class TaskKeyError(Exception):
    """A task's key cannot be computed because of the task's own arguments or a plugin."""


class FileDigests:
    """Content digests of files through the stat cache (device, inode, size, mtime_ns).

    An unchanged stat means an unchanged file; a changed stat with unchanged content refreshes
    the entry, so a ``touch`` costs one read once, not on every later build.
    """

    def __init__(self, entries: dict[str, StatEntry], hasher: Any) -> None:
        self.entries = dict(entries)
        self.hasher = hasher
        self.dirty: dict[str, StatEntry] = {}
        self.racy: dict[str, StatEntry] = {}  # hashed too soon after a change to remember yet
        #: Digests established during this build. A product checked as up to date is the next
        #: task's input: it is not stat'ed twice. A task that runs refreshes its products.
        self.known: dict[str, str] = {}

    def digest(self, path: str, fresh: bool = False) -> str | None:
        """The digest of ``path``, or None if it does not exist (or is not a file)."""
        if not fresh:
            known = self.known.get(path)
            if known is not None:
                return known
        digest = self._digest(path, fresh)
        if digest is not None:
            self.known[path] = digest
        return digest

    def _digest(self, path: str, fresh: bool) -> str | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        entry = self.entries.get(path)
        if (
            not fresh
            and entry is not None
            and entry[3] == st.st_mtime_ns
            and entry[2] == st.st_size
            and entry[1] == st.st_ino
            and entry[0] == st.st_dev
        ):
            return entry[4]
        try:
            digest = self.hasher.file_digest(path)
        except IsADirectoryError:
            return None
        self._remember(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest),
                       time.time_ns() - st.st_mtime_ns <= RACY_NS)
        return digest

    def accept(self, path: str, hashed: tuple[int, int, int, int, str, bool] | None) -> str | None:
        """Take in a digest made elsewhere (a worker hashes the products of its task, see
        ``Outcome.products``): as ``digest(path, fresh=True)`` would have made it."""
        if hashed is None:
            return None
        *entry, racy = hashed
        self._remember(path, tuple(entry), racy)  # type: ignore[arg-type]
        self.known[path] = hashed[4]
        return hashed[4]

    def _remember(self, path: str, entry: StatEntry, racy: bool) -> None:
        self.entries[path] = entry
        if racy:
            self.racy[path] = entry
        else:
            self.dirty[path] = entry

    def take_dirty(self) -> list[tuple[str, StatEntry]]:
        dirty, self.dirty = list(self.dirty.items()), {}
        return dirty

    def settle_racy(self) -> None:
        """At the end of a build, remember the files that were too new to trust when hashed
        (the products a build just wrote, typically) if they are old enough now and read the
        same: the next build then does not read them again. The newest stay unremembered
        rather than waited for: the next build reads those few once more (git's racy rule)."""
        now = time.time_ns()
        for path, entry in list(self.racy.items()):
            if now - entry[3] <= RACY_NS:
                continue
            del self.racy[path]
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != entry[:4]:
                    continue
                if self.hasher.file_digest(path) == entry[4]:
                    self.dirty[path] = entry
            except OSError:
                continue


@dataclass
class Decision:
    """Whether a task runs, why, and what it was matched against."""

    run: bool
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    parts: dict[str, Any] | None = None
    record: Record | None = None  # the matching record when up to date


class Rebuilder:
    """Computes keys and decisions for the tasks of one build."""

    def __init__(
        self,
        root: Path,
        state: State,
        files: FileDigests,
        code: CodeTracker | None,
        serializer: Any,
        hasher: Any,
        extras: Any,
    ) -> None:
        self.root = root
        self.state = state
        self.files = files
        self.code = code
        self.serializer = serializer
        self.hasher = hasher
        self.extras = extras  # hook caller for cpbuild_key_extras
        self._root_prefix = str(root) + os.sep
        self._has_extras = bool(extras.get_hookimpls())

    # -- parts ------------------------------------------------------------------------------

    def parts(
        self, task: Task, args: dict[str, Any], upstream: dict[str, tuple[str, str | None]]
    ) -> tuple[dict[str, Any], list[str]]:
        """The key parts of ``task`` and the problems that prevent computing them."""
        problems: list[str] = []
        inputs: dict[str, str] = {}
        digest_of, prefix = self.files.digest, self._root_prefix
        cut = len(prefix)
        for path in task.input_files:  # (the hottest loop of a no-op build: kept inline)
            digest = digest_of(path)
            name = path[cut:] if path.startswith(prefix) else path
            if digest is None:
                problems.append(f"input {name} does not exist")
            else:
                inputs[name] = digest
        extras: dict[str, str] = {}
        if self._has_extras:
            try:
                results = self.extras(task=task)
            except Exception as error:
                raise TaskKeyError(f"a plugin's cpbuild_key_extras failed: {type(error).__name__}: {error}") from error
            for result in results:
                if result:
                    extras.update({str(k): str(v) for k, v in result.items()})
        code, code_digest = self.task_code(task)
        parts = {
            "python": PYTHON_VERSION,
            "code": code,
            "code_digest": code_digest,
            "args": {name: self._argument(value) for name, value in args.items()} if args else {},
            "inputs": inputs,
            "upstream": {name: [up, digest] for name, (up, digest) in upstream.items()} if upstream else {},
            "products": sorted([p[cut:] if p.startswith(prefix) else p for p in task.product_files]),
            "extras": extras,
        }
        return parts, problems

    def task_code(self, task: Task) -> tuple[Any, str]:
        """(code items, their digest) of a task: from the graph cache, or analysed now."""
        return task.code if task.function is None else self.code.task_code(task.function)

    def _argument(self, value: Any) -> list[str]:
        return argument_parts(value, self.root, self.serializer, self.hasher)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """The digest of the parts, independent of the order in which they were declared."""
        lines = [f"python={parts['python']}", f"code={parts['code_digest']}"]
        for section in ("args", "inputs", "upstream", "extras"):
            entries = parts[section]
            if entries:
                if section == "args":
                    lines += [f"args:{n}={entries[n][0]}" for n in sorted(entries)]
                else:
                    lines += [f"{section}:{n}={entries[n]}" for n in sorted(entries)]
        lines += [f"product:{p}" for p in parts["products"]]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    # -- decisions ----------------------------------------------------------------------------

    def decide(
        self,
        task: Task,
        parts: dict[str, Any],
        forced: bool,
        needs_value: bool,
        storage: Any,
    ) -> Decision:
        key = self.key(parts)
        if not task.options.cache:
            return Decision(True, ["cache=False: always runs"], key, parts)
        if forced:
            return Decision(True, ["forced (-B)"], key, parts)
        latest = self.state.latest.get(task.id)
        if latest is not None and latest.key == key:
            problems = self._record_problems(latest, needs_value, storage)
            if not problems:
                return Decision(False, [], key, parts, latest)
            return Decision(True, problems, key, parts)
        earlier = self.state.find(key)
        if earlier is not None:
            problems = self._record_problems(earlier, needs_value, storage)
            if not problems:
                return Decision(False, ["an earlier build with the same key was found"], key, parts, earlier)
            # Back to an earlier key, but its results are not at hand any more.
            return Decision(True, [f"{p} since an earlier build with the same key" for p in problems], key, parts)
        return Decision(True, self.explain(task, parts), key, parts)

    def _record_problems(self, record: Record, needs_value: bool, storage: Any) -> list[str]:
        problems = []
        for rel, digest in record.products.items():
            path = rel if rel.startswith("/") else self._root_prefix + rel
            current = self.files.digest(path)
            if current is None:
                problems.append(f"product {rel} is missing")
            elif current != digest:
                problems.append(f"product {rel} was modified")
        if needs_value and record.value is not None and not storage.has(record.value):
            problems.append("its value is missing from the store")
        return problems

    def explain(self, task: Task, parts: dict[str, Any]) -> list[str]:
        """What differs between the last build of ``task`` and now."""
        latest = self.state.latest.get(task.id)
        old = self.state.parts(latest.key) if latest else None
        if old is None:
            return ["never built"]
        return describe_changes(old, parts) or ["its key changed"]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two sets of key parts."""
    reasons: list[str] = []
    if old.get("python") != new["python"]:
        reasons.append(f"Python changed: {old.get('python')} -> {new['python']}")
    reasons.extend(_code_changes(old.get("code", {}), new["code"]))
    old_args, new_args = old.get("args", {}), new["args"]
    for name in sorted(set(old_args) | set(new_args)):
        before, after = old_args.get(name), new_args.get(name)
        if before is None:
            reasons.append(f"new argument {name}: {after[1]}")
        elif after is None:
            reasons.append(f"argument {name} removed")
        elif before[0] != after[0]:
            reasons.append(f"argument {name}: {before[1]} -> {after[1]}")
    reasons.extend(_dict_changes("input", old.get("inputs", {}), new["inputs"]))
    old_up, new_up = old.get("upstream", {}), new["upstream"]
    for name in sorted(set(old_up) | set(new_up)):
        before, after = old_up.get(name), new_up.get(name)
        if before is None:
            reasons.append(f"new upstream value {name} (from {after[0]})")
        elif after is None:
            reasons.append(f"upstream value {name} removed")
        elif before[0] != after[0]:
            reasons.append(f"upstream of {name} changed: {before[0]} -> {after[0]}")
        elif before[1] != after[1]:
            reasons.append(f"value of upstream `{name}` changed")
    if old.get("products") != new["products"]:
        reasons.append("declared products changed")
    reasons.extend(_dict_changes("key extra", old.get("extras", {}), new["extras"]))
    return reasons


def _dict_changes(label: str, old: dict[str, str], new: dict[str, str]) -> Iterable[str]:
    for name in sorted(set(old) | set(new)):
        if name not in old:
            yield f"new {label} {name}"
        elif name not in new:
            yield f"{label} {name} removed"
        elif old[name] != new[name]:
            yield f"{label} {name} changed"


def _code_changes(old: dict[str, str], new: dict[str, str]) -> Iterable[str]:
    for item in sorted(set(old) | set(new)):
        kind, _, name = item.partition(" ")
        before, after = old.get(item), new.get(item)
        if before == after:
            continue
        what = describe_item(kind, name)
        if before is None:
            yield f"now uses {what}"
        elif after is None:
            yield f"no longer uses {what}"
        elif kind == "constant":
            yield f"{what}: {_clip(before)} -> {_clip(after)}"
        elif kind == "library":
            yield f"{what}: {before} -> {after}"
        else:
            yield f"code of {what} changed"


def describe_item(kind: str, name: str) -> str:
    """``function helpers.py::clean_row`` -> "`clean_row` in helpers.py"."""
    file, sep, qualname = name.partition("::")
    if kind == "library":
        return f"library {name}"
    if kind == "module":
        return f"module {name}"
    if not sep:
        return f"{kind} {name}"
    label = "constant " if kind == "constant" else ""
    return f"{label}`{qualname}` in {file}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
