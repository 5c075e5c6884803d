"""Parse JSON from uploads without letting odd values escape as crashes later on.

Three things the standard ``json`` module accepts, or nearly, that break the studio:

* nesting thousands of levels deep: the parser (and every encoder after it) recurses,
  so such a value ends in ``RecursionError``; rows deeper than :data:`MAX_NESTING` are refused;
* integer literals longer than Python's int/str conversion limit (4,300 digits):
  ``ValueError`` while parsing, or later while printing them;
* ``\\ud800``-style escapes of lone surrogates: they parse into strings that cannot be
  encoded as UTF-8, so writing the canonical JSONL or sending a preview to the browser fails.
  Such rows are refused rather than repaired: silently replacing characters would change
  what trains without anyone noticing.

:func:`loads` parses and raises :class:`JsonRefused` naming *where* in the value the problem
is; the fast path (nothing suspicious in the text) costs one ``json.loads`` and a few
C-speed string scans.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

MAX_NESTING = 100  # levels of arrays/objects in one row; real chat rows need 3 or 4
# The interpreter's int/str conversion limit; 0 means "no limit" (then keep Python's default).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300

# A \uXXXX escape of a surrogate (paired or not); only then can a parsed string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # "unrolled": fast on long strings
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_LEAF_PAIR = re.compile(r"\[\]|\{\}")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class JsonRefused(ValueError):
    """A JSON value that parses but must not be used; ``path`` says where inside it."""

    def __init__(self, path: list[str | int], reason: str, detail: str):
        super().__init__(f"{format_path(path)}: {detail}")
        self.path, self.reason, self.detail = path, reason, detail

    @property
    def field(self) -> list[str | int]:
        """The path to report: for a too-deep value only its top-level field (the chain of
        ``[0]`` down to the limit would not help anyone find it)."""
        return self.path[:1] if self.reason == "too_deep" else self.path


class _LongInt:
    """Stands in for an integer literal too long to convert, so its place can be reported."""

    def __init__(self, literal: str):
        self.digits = len(literal.lstrip("-"))


def _bounded_int(literal: str) -> int | _LongInt:
    return _LongInt(literal) if len(literal.lstrip("-")) > MAX_INT_DIGITS else int(literal)


def format_path(path: list[str | int], max_parts: int = 4) -> str:
    """``["messages", 2, "content"]`` as ``messages[2].content``; ``(row)`` for the whole value.

    Keys are shown with any lone surrogate escaped, so the name itself is printable; paths
    longer than ``max_parts`` (a too-deep value's) end in ``…``.
    """
    text = ""
    for part in path[:max_parts]:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = _printable(part)
            text += f".{key}" if text else key
    if len(path) > max_parts:
        text += "…"
    return text or "(row)"


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def loads(text: str, max_depth: int = MAX_NESTING) -> Any:
    """``json.loads`` that raises :class:`JsonRefused` for a too-deep value, a too-long integer or
    a lone surrogate (in a key or a string); syntax errors stay ``json.JSONDecodeError``."""
    if "\\u" not in text and text.count("[") + text.count("{") <= max_depth:
        # The common row: it can hold neither a surrogate nor a deep value; only a long integer.
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise
        except ValueError:
            pass  # an over-long integer: parse() says where
    value, suspect = parse(text, max_depth)
    if suspect:
        raise_problem(value, max_depth)
    return value


def parse(text: str, max_depth: int = MAX_NESTING) -> tuple[Any, bool]:
    """Parse ``text``; returns ``(value, suspect)``.

    ``suspect`` is False when the text cannot hold a too-deep value, a too-long integer or a
    lone surrogate, so callers can skip :func:`find_problem`. A value nested so deep that the
    parser itself gives up raises :class:`JsonRefused` pointing at the deepest container.
    """
    suspect = False
    try:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise
        except ValueError:
            # Only an over-long integer literal gets here; parse again keeping its place.
            value, suspect = json.loads(text, parse_int=_bounded_int), True
    except RecursionError:
        path = _too_deep_path(text, max_depth) or []
        raise JsonRefused(path, "too_deep", f"is nested deeper than {max_depth} levels") from None
    suspect = suspect or _may_be_deeper(text, max_depth) or _has_surrogate_escape(text)
    return value, suspect


def raise_problem(value: Any, max_depth: int = MAX_NESTING) -> None:
    """Raise :class:`JsonRefused` for the first problem :func:`find_problem` finds, if any."""
    problem = find_problem(value, max_depth)
    if problem is not None:
        raise problem


def find_problem(value: Any, max_depth: int = MAX_NESTING) -> JsonRefused | None:
    """The first too-deep container, too-long integer or lone surrogate in ``value``, or None.

    Walks with an explicit stack, so any depth is safe to look at.
    """
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return JsonRefused(path, "too_deep", f"is nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    if isinstance(key, str) and _LONE_SURROGATE.search(key):
                        return _surrogate_problem([*path, key], key, " in its name")
                    children.append((child, [*path, key], depth + 1))
            else:
                children = [(child, [*path, index], depth + 1) for index, child in enumerate(item)]
            stack.extend(reversed(children))  # reversed: report the first problem in file order
        elif isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return _surrogate_problem(path, item, "")
        elif isinstance(item, _LongInt):
            detail = f"is an integer with {item.digits:,} digits; the limit is {MAX_INT_DIGITS:,}"
            return JsonRefused(path, "number_too_long", detail)
    return None


def _surrogate_problem(path: list[str | int], text: str, where: str) -> JsonRefused:
    found = _LONE_SURROGATE.search(text)
    code = f"\\u{ord(found.group()):04x}" if found else "?"
    detail = f"has invalid Unicode{where} (lone surrogate {code}); re-export the file as UTF-8"
    return JsonRefused(path, "invalid_unicode", detail)


def _has_surrogate_escape(text: str) -> bool:
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def _may_be_deeper(text: str, max_depth: int) -> bool:
    """Whether ``text`` may nest deeper than ``max_depth`` (False is certain), at C speed.

    Drops strings and everything but brackets, then removes the innermost ``[]``/``{}``
    pairs once per round: a value of depth d is gone after exactly d rounds.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(max_depth):
        brackets = _LEAF_PAIR.sub("", brackets)
        if not brackets:
            return False
    return True


def _too_deep_path(text: str, max_depth: int) -> list[str | int] | None:
    """Where ``text`` first nests deeper than ``max_depth``: the keys and indexes leading there.

    A token scan without recursion, used only after the parser gave up on the depth.
    """
    # Each open container: [is_object, current key or index, expecting_key]
    stack: list[list[Any]] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            if len(stack) >= max_depth:
                return [frame[1] for frame in stack if frame[1] is not None]
            stack.append([token == "{", None if token == "{" else 0, token == "{"])
        elif token in "]}":
            if stack:
                stack.pop()
        elif not stack:
            continue
        elif token == ",":
            frame = stack[-1]
            if frame[0]:
                frame[2] = True
            else:
                frame[1] += 1
        elif token == ":":
            stack[-1][2] = False
        elif stack[-1][0] and stack[-1][2]:  # a string where an object expects its key
            try:
                stack[-1][1] = json.loads(token)
            except ValueError:
                stack[-1][1] = token.strip('"')
    return None
