"""Errors a user can fix, and the one base they share.

Every error whose message a user can act on derives from `UserFacingError`; front ends map that base once:
the CLI prints one line and exits 2 (cli/common.py `friendly`), the API picks a status by subclass
(api/errors.py: NotFound 404, Conflict 409, vector store errors 503, the rest 422).
"""

from __future__ import annotations


class UserFacingError(Exception):
    """Base: the message is shown to the user as it is."""


class NotFound(UserFacingError):
    def __init__(self, kind: str, ref: object, message: str | None = None) -> None:
        super().__init__(message or f"unknown {kind}: {ref}")
        self.kind = kind
        self.ref = ref


class InvalidInput(UserFacingError):
    pass


class Conflict(UserFacingError):
    """The request no longer matches the state (e.g. a cluster changed since the client loaded it)."""
