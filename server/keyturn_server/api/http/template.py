"""Path templates of google.api.http rules, matched against request paths.

The grammar is the one documented in google/api/http.proto::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

A template compiles to one regular expression; a variable's value is percent-decoded,
except that a variable spanning several segments keeps its "/" separators as sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class TemplateError(ValueError):
    """A google.api.http path template that does not follow the grammar."""


@dataclass(frozen=True)
class Template:
    text: str
    pattern: re.Pattern[str]
    #: Field paths bound by the template, in order ("key_id", "book.name").
    variables: tuple[str, ...]
    #: Variables that may span several segments ("**" or several segments).
    multi_segment: frozenset[str]

    @property
    def literal(self) -> bool:
        """A template without variables or wildcards matches exactly one path."""
        return not self.variables and "*" not in self.text

    def match(self, path: str) -> dict[str, str] | None:
        """The variables bound by ``path`` (raw, still percent-encoded), or None."""
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, name in enumerate(self.variables):
            raw = found.group(f"v{index}")
            if name in self.multi_segment:
                values[name] = "/".join(unquote(part) for part in raw.split("/"))
            else:
                values[name] = unquote(raw)
        return values


def parse(text: str) -> Template:
    if not text.startswith("/"):
        raise TemplateError(f"{text!r}: a template starts with '/'")
    body, verb = _split_verb(text[1:])
    variables: list[str] = []
    multi: set[str] = set()
    regex = "/" + _segments(body, variables, multi, text)
    if verb:
        regex += re.escape(":" + verb)
    return Template(text, re.compile(regex), tuple(variables), frozenset(multi))


def _split_verb(body: str) -> tuple[str, str]:
    """A verb is a ':' after the last '/' that is outside any variable."""
    depth = 0
    cut = -1
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            cut = -1
        elif char == ":" and depth == 0:
            cut = index
    if cut < 0:
        return body, ""
    return body[:cut], body[cut + 1 :]


def _segments(body: str, variables: list[str], multi: set[str], text: str) -> str:
    parts: list[str] = []
    for segment in _split_segments(body, text):
        if segment == "*":
            parts.append(r"[^/]+")
        elif segment == "**":
            parts.append(r".*")
        elif segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"{text!r}: unclosed variable {segment!r}")
            name, _, inner = segment[1:-1].partition("=")
            if not _IDENT.match(name):
                raise TemplateError(f"{text!r}: {name!r} is not a field path")
            index = len(variables)
            variables.append(name)
            if inner and (inner != "*"):
                multi.add(name)
                parts.append(f"(?P<v{index}>{_segments(inner, [], set(), text)})")
            else:
                parts.append(f"(?P<v{index}>[^/]+)")
        elif not segment or any(c in segment for c in "{}*"):
            raise TemplateError(f"{text!r}: bad segment {segment!r}")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def _split_segments(body: str, text: str) -> list[str]:
    segments: list[str] = []
    depth = 0
    current = ""
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"{text!r}: unbalanced braces")
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += char
    segments.append(current)
    return segments
