"""Config tokenizer: numbers, keywords, strings, braces (mirrors Odyssey sources/parser.h).

``tokenize(text, file)`` never raises: bad input becomes ``ERR`` tokens that the reader reports
with their ``file:line:col``.  Strings may span lines and ``\\"`` inside a string is a quote (as
HEAD's parser has it, see docs/differences.md); a number may carry a size suffix (``1kb``,
``16mb``, ``1g``).
"""
from __future__ import annotations

import re

from odyssey_gevent.config.model import Location

NUM, IDENT, STR, SYM, EOF, ERR = "number", "keyword", "string", "symbol", "end of file", "error"

_SIZE_SUFFIX = re.compile(r"(?i)(kb|mb|gb|k|m|g|b)(?![A-Za-z0-9_])")
_MULT = {"b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "g": 1024 ** 3,
         "gb": 1024 ** 3}


class Token:
    __slots__ = ("kind", "value", "line", "col", "file")

    def __init__(self, kind, value, line, col, file):
        self.kind, self.value, self.line, self.col, self.file = kind, value, line, col, file

    @property
    def loc(self) -> Location:
        return Location(self.file, self.line, self.col)

    def describe(self) -> str:
        if self.kind == EOF:
            return "end of file"
        if self.kind == STR:
            return f'string "{self.value}"'
        if self.kind == ERR:
            return self.value
        return f"{self.kind} '{self.value}'"

    def __repr__(self):
        return f"Token({self.kind}, {self.value!r}, {self.line}:{self.col})"


def tokenize(text: str, file: str) -> list[Token]:
    """Split config text into tokens.  Never raises: bad input becomes ERR tokens."""
    toks: list[Token] = []
    i, n = 0, len(text)
    line, line_start = 1, 0
    while True:
        # whitespace and comments
        while i < n:
            ch = text[i]
            if ch == "\n":
                line += 1
                i += 1
                line_start = i
            elif ch in " \t\r\f\v":
                i += 1
            elif ch == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
            else:
                break
        if i >= n:
            toks.append(Token(EOF, None, line, i - line_start + 1, file))
            return toks
        ch = text[i]
        col = i - line_start + 1
        if ch.isascii() and (ch.isdigit() or (ch == "-" and i + 1 < n and text[i + 1].isascii()
                                              and text[i + 1].isdigit())):
            j = i + 1
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            value = int(text[i:j])
            m = _SIZE_SUFFIX.match(text, j)
            if m:
                value *= _MULT[m.group(1).lower()]
                j = m.end()
            toks.append(Token(NUM, value, line, col, file))
            i = j
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(Token(IDENT, text[i:j], line, col, file))
            i = j
        elif ch == '"':
            j = i + 1
            buf = []
            start_line, start_col = line, col
            closed = False
            while j < n:
                c = text[j]
                if c == '"':
                    closed = True
                    break
                if c == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    if nxt == '"':
                        buf.append('"')
                    else:
                        buf.append(c)
                        buf.append(nxt)
                    if nxt == "\n":
                        line += 1
                        line_start = j + 2
                    j += 2
                    continue
                if c == "\n":
                    line += 1
                    line_start = j + 1
                buf.append(c)
                j += 1
            if not closed:
                toks.append(Token(ERR, "unterminated string", start_line, start_col, file))
                toks.append(Token(EOF, None, line, n - line_start + 1, file))
                return toks
            toks.append(Token(STR, "".join(buf), start_line, start_col, file))
            i = j + 1
        elif ch in "{}":
            toks.append(Token(SYM, ch, line, col, file))
            i += 1
        else:
            shown = ch if ch.isprintable() else repr(ch)[1:-1]
            toks.append(Token(ERR, f"unexpected character '{shown}'", line, col, file))
            i += 1

