"""Static analysis of Python source for code keys: parse, normalize, find loaded names.

Imported only when a source file must actually be parsed: a no-op build whose task and helper
files are unchanged takes every function's analysis from the state's code cache and parses
nothing.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import symtable
import types
from typing import Any, NamedTuple

_MISSING = object()


class Analysis(NamedTuple):
    """What the source says about one function or class: its digest and the names it loads."""

    digest: str
    references: tuple[tuple[str, ...], ...]


def _nested_statements(node: ast.AST) -> list[Any]:
    """The statements directly inside ``node`` (and its except handlers and match cases).

    Function and class definitions are statements, so walking statements finds them all
    without visiting a single expression: a signature of a thousand annotated parameters costs
    nothing to step over."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            found.append(child)
        elif isinstance(child, ast.excepthandler | ast.match_case):
            found.extend(c for c in ast.iter_child_nodes(child) if isinstance(c, ast.stmt))
    return found


def _strip_docstrings(node: Any) -> None:
    """Drop docstrings: they document, they do not compute."""
    for child in _nested_statements(node):
        _strip_docstrings(child)
    if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]


class SourceFile:
    """One parsed source file, indexed so that functions and classes are found without
    ``inspect.getsource`` (which re-tokenizes the file for every function)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as stream:
            self.text = stream.read()
        self.path = path
        self.tree = ast.parse(self.text, filename=path)
        _strip_docstrings(self.tree)
        self.functions: dict[tuple[int, str], ast.AST] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self._lambdas: dict[int, list[ast.Lambda]] | None = None
        self._scopes: dict[tuple[int, str], symtable.SymbolTable] | None = None
        self._index(self.tree, "")

    def _index(self, node: ast.AST, prefix: str) -> None:
        for child in _nested_statements(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                self.functions[(first, child.name)] = child
                self.functions.setdefault((child.lineno, child.name), child)
                self._index(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                self.classes.setdefault(f"{prefix}{child.name}", child)
                self._index(child, f"{prefix}{child.name}.")
            else:
                self._index(child, prefix)

    @property
    def lambdas(self) -> dict[int, list[ast.Lambda]]:
        """Lambdas by line: found in a walk of every node, done once a lambda is analysed."""
        if self._lambdas is None:
            self._lambdas = {}
            stack: list[ast.AST] = [self.tree]
            while stack:  # depth first, in source order: the order is part of the digest
                node = stack.pop()
                if isinstance(node, ast.Lambda):
                    self._lambdas.setdefault(node.lineno, []).append(node)
                stack.extend(reversed(list(ast.iter_child_nodes(node))))
        return self._lambdas

    def scope(self, lineno: int, name: str) -> symtable.SymbolTable | None:
        """The compiler's symbol table of the function or class defined at ``lineno``."""
        if self._scopes is None:
            self._scopes = {}
            stack = [symtable.symtable(self.text.decode("utf-8", "replace"), self.path, "exec")]
            while stack:
                table = stack.pop()
                self._scopes.setdefault((table.get_lineno(), table.get_name()), table)
                stack.extend(table.get_children())
        return self._scopes.get((lineno, name))


class Chains(ast.NodeVisitor):
    """The name chains an expression or body loads: ``helpers.scale`` is ("helpers", "scale")."""

    def __init__(self) -> None:
        self.chains: set[tuple[str, ...]] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.chains.add((node.id,))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = [node.attr]
        value = node.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and isinstance(node.ctx, ast.Load):
            self.chains.add((value.id, *reversed(parts)))
        else:
            self.visit(value)


def _chains(*nodes: Any) -> set[tuple[str, ...]]:
    visitor = Chains()
    for node in nodes:
        if node is not None:
            visitor.visit(node)
    return visitor.chains


def _globals_used(table: symtable.SymbolTable) -> set[str]:
    """Names a scope and every scope nested in it read from the module (or builtins).

    The compiler's own scoping rules decide: a name bound in a nested function, method or
    comprehension does not hide the same global read elsewhere, and a parameter or local
    never counts as a reference.
    """
    names: set[str] = set()
    stack = [table]
    while stack:
        scope = stack.pop()
        names.update(s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced())
        stack.extend(scope.get_children())
    return names


def _header(node: Any) -> list[Any]:
    """The parts of a definition evaluated in the enclosing scope: decorators, defaults,
    annotations, bases."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = node.args
        parts = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
        if not isinstance(node, ast.Lambda):
            parts += [*node.decorator_list, node.returns]
            parts += [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            parts += [a.annotation for a in (args.vararg, args.kwarg) if a is not None]
        return parts
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *node.keywords]
    return []


def analyse(node: Any, namespace: dict[str, Any], source: SourceFile | None = None) -> Analysis:
    """The digest of a function or class node and the name chains it loads from outside."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        kept = [d for d in decorators if not is_declaration(d, namespace)]
        if len(kept) != len(decorators):
            node = copy_with_decorators(node, kept)
    definitions = node.elts if isinstance(node, ast.Tuple) else [node]  # lambdas on one line
    allowed: set[str] = set()
    for definition in definitions:
        allowed |= {c[0] for c in _chains(*_header(definition))}
        name = "lambda" if isinstance(definition, ast.Lambda) else definition.name
        table = source.scope(definition.lineno, name) if source is not None else None
        if table is None:  # no symbol table (should not happen): every loaded name counts
            allowed |= {c[0] for c in _chains(definition)}
        else:
            allowed |= _globals_used(table)
    references = tuple(sorted(c for c in _chains(node) if c[0] in allowed))
    dump = ast.dump(node, annotate_fields=False, include_attributes=False)
    return Analysis(hashlib.sha256(dump.encode()).hexdigest(), references)


def is_declaration(decorator: ast.expr, namespace: dict[str, Any]) -> bool:
    """True for ``@task``, ``@task(...)``, ``@mark.x``, ``@pytask.mark.x(...)``: declarations
    whose data enters the key as arguments and markers, not as code."""
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return False
    obj = namespace.get(node.id, _MISSING)
    for attr in reversed(parts):
        if obj is _MISSING:
            break
        if isinstance(obj, types.ModuleType) and obj.__name__ in ("cpbuild", "pytask"):
            return True
        obj = getattr(obj, attr, _MISSING)
    if obj is _MISSING:
        return False
    from cpbuild.model import is_cpbuild_object

    owner = getattr(obj, "__module__", None) or type(obj).__module__
    return owner in ("cpbuild.api", "cpbuild", "pytask") or is_cpbuild_object(obj)


def copy_with_decorators(node: Any, decorators: list[ast.expr]) -> Any:
    """A shallow copy (positions included: they find the symbol table) with other decorators."""
    clone = copy.copy(node)
    clone.decorator_list = decorators
    return clone


def function_node(source: SourceFile, code: types.CodeType, name: str) -> Any:
    """The AST node of the function compiled to ``code``, found by its first line."""
    if name == "<lambda>":
        lambdas = source.lambdas.get(code.co_firstlineno)
        return ast.Tuple(elts=list(lambdas), ctx=ast.Load()) if lambdas else None
    return source.functions.get((code.co_firstlineno, code.co_name))


def class_node(source: SourceFile, cls: type) -> Any:
    """The class's node by its qualified name; by its plain name only when that is unique
    (a class made by ``type()`` or ``exec`` has no qualified name in the file)."""
    node = source.classes.get(cls.__qualname__)
    if node is None:
        same = [n for q, n in source.classes.items() if q.rsplit(".", 1)[-1] == cls.__name__]
        node = same[0] if len(same) == 1 else None
    return node


def module_digest(source: SourceFile) -> str:
    return hashlib.sha256(ast.dump(source.tree, annotate_fields=False).encode()).hexdigest()
