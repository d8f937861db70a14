"""Recorded text made safe for a terminal.

A run record, a bundle or a program's output is written by someone else: a field holding ESC sequences,
carriage returns or newlines could move the cursor, recolour the screen or print a line of its own (a
forged "integrity: ok"). Everything recorded that reaches a terminal goes through `terminal_safe`, which
shows such characters as escapes instead of sending them.
"""
from __future__ import annotations

import re
import unicodedata

# C0 controls (newline and tab included: a field is shown on one line), DEL, C1 controls (some terminals
# read 0x9b as CSI), and the Unicode characters that reorder or hide text (bidi overrides and isolates,
# zero-width characters, line/paragraph separators): a reader must see the bytes that are there.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: object) -> str:
    """`text` as one line that prints as itself: control and invisible-formatting characters as \\xNN / \\uNNNN.

    None becomes "" so callers can pass record fields as they are.
    """
    if text is None:
        return ""
    value = text if isinstance(text, str) else str(text)
    if value.isprintable() and value.isascii():  # the common case, no regex pass
        return value
    value = _UNSAFE.sub(_escape, value)
    # anything else Unicode files as a control or format character (Cc, Cf, Cs: unpaired surrogates from
    # undecodable bytes) is escaped too; letters of every script pass unchanged
    if not value.isprintable():
        value = "".join(_escape_other(ch) for ch in value)
    return value


def _escape_other(ch: str) -> str:
    if ch == " " or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"):
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else (f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")


__all__ = ["terminal_safe"]
