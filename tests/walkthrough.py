"""Reading the command lines of a walkthrough script and of the page that documents it,
so a test can hold the two to each other (grpcurl and curl tours alike)."""

from __future__ import annotations

import re


def command_calls(text: str, command: str) -> list[str]:
    """Every ``command`` line of a shell text, continuations joined, without the capture
    around it, whitespace collapsed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    calls = []
    for line in joined.splitlines():
        start = line.find(f"{command} -")
        if start < 0:
            continue
        call = line[start:]
        call = re.sub(r"( 2>&1)?\)( \|\| status=\$\?)?$", "", call)
        calls.append(" ".join(call.split()))
    return calls
