"""kiwi.errors: the exceptions kiwi raises (Odyssey kiwi reports these as -1 return codes).

Every reader raises only ``ProtocolError`` on bad bytes; SCRAM raises ``ScramError``
(see ``kiwi.scram``). Both derive from ``KiwiError``, which carries what the pooler
needs to build an ErrorResponse: the SQLSTATE, the severity and the side at fault.
"""
from __future__ import annotations

from kiwi import error_codes

__all__ = ["KiwiError", "ProtocolError", "CLIENT", "SERVER"]

CLIENT = "client"  # the peer that is a PostgreSQL client (frontend) sent the bad bytes
SERVER = "server"  # the PostgreSQL server (backend) sent the bad bytes


class KiwiError(Exception):
    """A protocol-level failure with a SQLSTATE.

    ``side`` says whose fault it is: ``"client"`` (a frontend sent it) or ``"server"``
    (PostgreSQL sent it). ``severity`` is the one the pooler should report
    (``"ERROR"`` or ``"FATAL"``).
    """

    default_sqlstate = error_codes.INTERNAL_ERROR
    default_severity = "ERROR"

    def __init__(self, message: str, sqlstate: str | None = None,
                 severity: str | None = None, side: str = CLIENT) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate or self.default_sqlstate
        self.severity = severity or self.default_severity
        self.side = side

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, sqlstate={self.sqlstate!r}, "
                f"severity={self.severity!r}, side={self.side!r})")


class ProtocolError(KiwiError):
    """Malformed or oversized protocol bytes (SQLSTATE 08P01 protocol_violation)."""

    default_sqlstate = error_codes.PROTOCOL_VIOLATION
    default_severity = "FATAL"
