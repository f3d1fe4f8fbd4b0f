"""Let the application close sockets with PROTOCOL.md's 1009 and 1012 under daphne.

Autobahn's ``sendClose`` (which daphne's ``serverClose`` calls) accepts only 1000 and
3000-4999, the codes a *browser* may choose (autobahn-python#1642, daphne#374). RFC 6455
section 7.4.1 lets a server send the registered codes too, and PROTOCOL.md needs two of them:
1009 (frame too big) and 1012 (service restart: reconnect elsewhere). For those codes the close
frame is sent through autobahn's ``sendCloseFrame``; every other code keeps daphne's behaviour.

A message over daphne's own ``--websocket-max-message-size`` never reaches the application:
autobahn fails the connection itself, and with its default ``failByDrop`` it drops TCP without
a close frame (the peer sees 1006). Daphne's factory is therefore made to fail connections with
a close frame, so such a peer gets 1009 as PROTOCOL.md promises.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

SERVER_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011, 1012, 1013})


def install() -> bool:
    """Patch daphne's WebSocket protocol if daphne serves this process; True if patched."""
    if "daphne.server" not in sys.modules:
        return False
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

    if getattr(WebSocketProtocol, "_scheduler_close_codes", False):
        return True
    factory_init = WebSocketFactory.__init__

    def factory_init_closing(self: Any, *args: Any, **kwargs: Any) -> None:
        factory_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)

    WebSocketFactory.__init__ = factory_init_closing
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code=code)

    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._scheduler_close_codes = True
    return True
