"""``-k`` and ``-m`` expressions, in pytest's syntax: ``and``, ``or``, ``not``, parentheses,
and identifiers (``-k``: a case-insensitive substring of the task id; ``-m``: a marker name)."""

from __future__ import annotations

import re
from collections.abc import Callable

from cpbuild.errors import UsageError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def compile_expression(text: str, option: str) -> Callable[[Callable[[str], bool]], bool]:
    """Parse ``text``; the result evaluates it given a predicate for identifiers."""
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise UsageError(f"{option}: empty expression")
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise UsageError(f"{option} {text!r}: expression ends unexpectedly")
        position += 1
        return token

    def parse_or() -> Callable[[Callable[[str], bool]], bool]:
        left = parse_and()
        while peek() == "or":
            take()
            right, before = parse_and(), left
            left = lambda m, a=before, b=right: a(m) or b(m)  # noqa: E731
        return left

    def parse_and() -> Callable[[Callable[[str], bool]], bool]:
        left = parse_not()
        while peek() == "and":
            take()
            right, before = parse_not(), left
            left = lambda m, a=before, b=right: a(m) and b(m)  # noqa: E731
        return left

    def parse_not() -> Callable[[Callable[[str], bool]], bool]:
        token = take()
        if token == "not":
            inner = parse_not()
            return lambda m: not inner(m)
        if token == "(":
            inner = parse_or()
            if take() != ")":
                raise UsageError(f"{option} {text!r}: missing ')'")
            return inner
        if token in ("and", "or", ")"):
            raise UsageError(f"{option} {text!r}: unexpected '{token}'")
        return lambda m: m(token)

    result = parse_or()
    if peek() is not None:
        raise UsageError(f"{option} {text!r}: unexpected '{peek()}'")
    return result
