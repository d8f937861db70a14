"""terminal_safe: recorded text prints as itself, on one line, and can neither steer the terminal nor add lines."""
import unicodedata

import pytest
from hypothesis import given, strategies as st

from gpurepro.text import terminal_safe


@pytest.mark.parametrize("raw, shown", [
    ("step14: pass", "step14: pass"),
    ("a\x1b[2K\rintegrity: ok", "a\\x1b[2K\\x0dintegrity: ok"),     # erase line, carriage return
    ("x\nintegrity: ok", "x\\x0aintegrity: ok"),                    # a forged second line
    ("tab\there", "tab\\x09here"),
    ("\x9b31mred", "\\x9b31mred"),                                   # C1 CSI, read as ESC [ by some terminals
    ("\x7f\x00\x07", "\\x7f\\x00\\x07"),
    ("abc\u202edcba", "abc\\u202edcba"),                             # right-to-left override
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("line\u2028sep", "line\\u2028sep"),
    ("bad \udcff byte", "bad \\udcff byte"),                         # surrogateescape of an undecodable byte
    ("café, 中文, naïve, ø", "café, 中文, naïve, ø"),                   # letters of every script pass unchanged
    (None, ""),
    (42, "42"),
])
def test_terminal_safe(raw, shown):
    assert terminal_safe(raw) == shown


@given(st.text())
def test_any_text_becomes_one_printable_line(text):
    safe = terminal_safe(text)
    assert "\n" not in safe and "\r" not in safe and "\x1b" not in safe and "\x9b" not in safe
    # no control, format, surrogate or line/paragraph-separator character survives (spaces may)
    assert not [ch for ch in safe if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert terminal_safe(safe) == safe  # idempotent: escaping twice shows the same thing
    if text.isascii() and text.isprintable():
        assert safe == text
