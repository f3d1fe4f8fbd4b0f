"""A Channels layer on Redis Cluster Streams: generic, with no knowledge of its users.

``CHANNEL_LAYERS = {"default": {"BACKEND": "clusterlayer.ClusterChannelLayer",
"CONFIG": {"url": "redis://host:7000"}}}``; docs/channel-layer.md describes the design.
"""

from __future__ import annotations

from clusterlayer.errors import ProcessGone
from clusterlayer.layer import ClusterChannelLayer

__all__ = ["ClusterChannelLayer", "ProcessGone"]
