"""kiwi.saslprep: SASLprep (RFC 4013, a stringprep profile) for SCRAM passwords, with
PostgreSQL's fallback rules (src/common/saslprep.c).

``saslprep(text)`` applies the profile and raises ``SaslprepError``. ``scram_password_bytes``
is what SCRAM hashes, the way PostgreSQL does it: pure ASCII and non-UTF-8 passwords are
used as they are, and a password the profile rejects is used raw rather than refused.
"""
from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SaslprepError", "saslprep", "scram_password_bytes"]


class SaslprepError(ValueError):
    pass


_PROHIBITED = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21,  # ASCII control
    stringprep.in_table_c22,  # non-ASCII control
    stringprep.in_table_c3,   # private use
    stringprep.in_table_c4,   # non-character code points
    stringprep.in_table_c5,   # surrogates
    stringprep.in_table_c6,   # inappropriate for plain text
    stringprep.in_table_c7,   # inappropriate for canonical representation
    stringprep.in_table_c8,   # change display properties / deprecated
    stringprep.in_table_c9,   # tagging characters
    stringprep.in_table_a1,   # unassigned code points (stored strings)
)


def saslprep(text: str) -> str:
    # 1. map: non-ASCII spaces to SPACE, "commonly mapped to nothing" removed
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    # 2. normalize (NFKC)
    out = unicodedata.normalize("NFKC", mapped)
    if not out:
        return out
    # 3. prohibit
    for c in out:
        for table in _PROHIBITED:
            if table(c):
                raise SaslprepError(f"prohibited character U+{ord(c):04X}")
    # 4. bidirectional characters (RFC 3454 section 6)
    if any(stringprep.in_table_d1(c) for c in out):
        if any(stringprep.in_table_d2(c) for c in out):
            raise SaslprepError("mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise SaslprepError("right-to-left text must start and end with RandALCat")
    return out


def scram_password_bytes(password) -> bytes:
    """The bytes SCRAM hashes for ``password`` (str or bytes), following PostgreSQL."""
    if isinstance(password, str):
        raw = password.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(password)
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    try:
        return saslprep(text).encode("utf-8")
    except SaslprepError:
        return raw
