"""Exceptions the SDK raises to its caller (handlers raise the ones in ``scheduler_sdk.node``)."""

from __future__ import annotations

from protocol import Error


class SdkError(Exception):
    """Base of the SDK's own failures."""


class Unauthorized(SdkError):
    """The scheduler refused the node token or API key (close code 4401); retrying cannot help."""


class Replaced(SdkError):
    """A newer connection took this node token or session (close code 4409)."""


class RequestFailed(SdkError):
    """The scheduler answered a request with an ``error`` frame instead of a reply."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error
