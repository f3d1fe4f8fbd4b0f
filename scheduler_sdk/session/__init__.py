"""Submit jobs to the scheduler as a session (PROTOCOL.md "Session ⇄ scheduler").

The client keeps one WebSocket to ``/ws/session/``. After a drop (other than 4401 or 4409) it
reconnects with backoff and sends ``session_init`` with its ``session_id``, so the scheduler
resumes the session and delivers the results that finished meanwhile, and with ``awaiting``
(the accepted jobs whose results have not arrived), so a result sent on the connection that
died is sent again. Submits still waiting
for their ``job_accepted`` / ``job_rejected`` are sent again on the new connection: the
``request_id`` makes that safe (the scheduler answers a repeat with the same job).

``client`` holds ``SessionClient``; ``pending`` the submits and pings waiting for an answer;
``inbox`` the results and events that arrived for the caller; ``stats`` the counters.
"""

from __future__ import annotations

from scheduler_sdk.session.client import SessionClient, SessionClosed
from scheduler_sdk.session.inbox import SessionEvent
from scheduler_sdk.session.stats import SessionStats

__all__ = ["SessionClient", "SessionClosed", "SessionEvent", "SessionStats"]
