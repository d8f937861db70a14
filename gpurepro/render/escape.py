"""Escaping recorded text for each output format, written once: JUnit/XML, Markdown table cells."""
from __future__ import annotations


def visible(text: str) -> str:
    """Control characters shown as \\xNN escapes rather than dropped: the evidence stays readable (and XML-safe)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t":
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def md_cell(text) -> str:
    """One Markdown table cell (or inline run of text): no pipe, no line break, no control character."""
    return visible(str(text if text is not None else "")).replace("|", "\\|").replace("\n", " ").replace("\t", " ")
