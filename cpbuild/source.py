"""Static analysis of Python source for code keys: parse, normalize, find loaded names.

Imported only when a source file must actually be parsed: a no-op build whose task and helper
files are unchanged takes every function's analysis from the state's code cache and never
imports ``ast``.
"""

from __future__ import annotations

import ast
import hashlib
import types
from typing import Any, NamedTuple

_MISSING = object()


class Analysis(NamedTuple):
    """What the source says about one function or class: its digest and the names it loads."""

    digest: str
    references: tuple[tuple[str, ...], ...]


class StripDocstrings(ast.NodeTransformer):
    """Drop docstrings: they document, they do not compute."""

    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Module = _strip


class SourceFile:
    """One parsed source file, indexed so that functions and classes are found without
    ``inspect.getsource`` (which re-tokenizes the file for every function)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as stream:
            tree = ast.parse(stream.read(), filename=path)
        self.tree = StripDocstrings().visit(tree)
        self.functions: dict[tuple[int, str], ast.AST] = {}
        self.lambdas: dict[int, list[ast.Lambda]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self._index(self.tree, "")

    def _index(self, node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                self.functions[(first, child.name)] = child
                self.functions.setdefault((child.lineno, child.name), child)
                self._index(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                self.classes.setdefault(f"{prefix}{child.name}", child)
                self._index(child, f"{prefix}{child.name}.")
            else:
                if isinstance(child, ast.Lambda):
                    self.lambdas.setdefault(child.lineno, []).append(child)
                self._index(child, prefix)


class Names(ast.NodeVisitor):
    """Collect the names a function or class body binds and the name chains it loads."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.declared_global: set[str] = set()
        self.chains: set[tuple[str, ...]] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.chains.add((node.id,))
        else:
            self.bound.add(node.id)

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

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)
        if node.annotation is not None:
            self.visit(node.annotation)

    def _bind_definition(self, node: Any) -> None:
        self.bound.add(node.name)
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _bind_definition

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            self.bound.add((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.declared_global.update(node.names)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.bound.add(node.name)


def analyse(node: Any, namespace: dict[str, Any]) -> Analysis:
    """The digest of a function or class node and the name chains it loads from outside."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        kept = [d for d in decorators if not is_declaration(d, namespace)]
        if len(kept) != len(decorators):
            node = copy_with_decorators(node, kept)
    names = Names()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        # The function's own name is bound in its module, not in its body: a recursive
        # call is not a reference to something else.
        names.visit(node.args)
        for decorator in node.decorator_list:
            names.visit(decorator)
        if node.returns is not None:
            names.visit(node.returns)
        for statement in node.body:
            names.visit(statement)
        names.bound.add(node.name)
    elif isinstance(node, ast.ClassDef):
        for child in (*node.bases, *node.keywords, *node.decorator_list, *node.body):
            names.visit(child)
    else:
        names.visit(node)
    local = names.bound - names.declared_global
    references = tuple(sorted(c for c in names.chains if c[0] not in local))
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
    from cpbuild.fingerprint import is_cpbuild_object

    owner = getattr(obj, "__module__", None) or type(obj).__module__
    return owner in ("cpbuild.api", "cpbuild", "pytask") or is_cpbuild_object(obj)


def copy_with_decorators(node: Any, decorators: list[ast.expr]) -> Any:
    clone = type(node)(**{field: getattr(node, field) for field in node._fields})
    clone.decorator_list = decorators
    return clone


def function_node(source: SourceFile, code: types.CodeType, name: str) -> Any:
    """The AST node of the function compiled to ``code``, found by its first line."""
    if name == "<lambda>":
        lambdas = source.lambdas.get(code.co_firstlineno)
        return ast.Tuple(elts=list(lambdas), ctx=ast.Load()) if lambdas else None
    return source.functions.get((code.co_firstlineno, code.co_name))


def class_node(source: SourceFile, cls: type) -> Any:
    node = source.classes.get(cls.__qualname__.replace("<locals>.", ""))
    if node is None:  # a class defined inside a function: find it by its plain name
        node = next(
            (n for q, n in source.classes.items() if q.rsplit(".", 1)[-1] == cls.__name__), None
        )
    return node


def module_digest(source: SourceFile) -> str:
    return hashlib.sha256(ast.dump(source.tree, annotate_fields=False).encode()).hexdigest()
