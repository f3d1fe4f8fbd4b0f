"""What a session client counts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SessionStats:
    connects: int = 0
    resumed: int = 0
    new_sessions: int = 0
    submits_resent: int = 0
    progress: int = 0
    results: int = 0
    errors: int = 0
