"""Whole numbers written in request text (query parameters, headers), read as a client
means them: ASCII digits only, and no more of them than the range allows.

``str.isdigit`` and ``int`` disagree on what a digit is: "²" passes isdigit() and int()
refuses it (a ValueError that escaped as a 500), int() reads "٣" (Arabic-Indic three) as
3, which a proxy in front would not, and it refuses more than 4,300 digits at all. The
text is matched against [0-9] and its length bounded first, so int() only ever sees what
it accepts.
"""

from __future__ import annotations

import re

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

#: [0-9], not \d: \d matches every Unicode decimal digit.
_INTEGER = re.compile(r"-?[0-9]+")


def integer(text: str, low: int, high: int) -> int | None:
    """The integer from ``low`` to ``high`` that ``text`` spells in ASCII digits (with a
    leading minus), or None when it spells none, or one out of that range."""
    if len(text) > max(len(str(low)), len(str(high))) or _INTEGER.fullmatch(text) is None:
        return None
    number = int(text)
    return number if low <= number <= high else None


def whole_number(text: str, high: int) -> int | None:
    """``integer`` from 0 to ``high``: no minus sign."""
    return integer(text, 0, high)
