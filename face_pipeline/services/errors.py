"""Errors a user can act on. Front ends map them: CLI -> one line and exit 2; HTTP -> 404 / 422 / 409."""

from __future__ import annotations


class UserFacingError(Exception):
    """Base: the message is shown to the user as it is."""


class NotFound(UserFacingError):
    def __init__(self, kind: str, ref: object) -> None:
        super().__init__(f"unknown {kind}: {ref}")
        self.kind = kind
        self.ref = ref


class InvalidInput(UserFacingError):
    pass


class Conflict(UserFacingError):
    """The request no longer matches the state (e.g. a cluster changed since the client loaded it)."""
