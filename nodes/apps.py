from __future__ import annotations

from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "nodes"
    verbose_name = "Nodes"

    def ready(self) -> None:
        from core.runtime import DUTIES, Duty
        from nodes.services import directory_prune
        from nodes.snapshot import REFRESH_INTERVAL_S, snapshot_refresh

        # A worker re-dispatches jobs, so it keeps a node snapshot like an instance.
        DUTIES.register(Duty("snapshot_refresh", REFRESH_INTERVAL_S, snapshot_refresh))
        DUTIES.register(Duty("directory_prune", 30.0, directory_prune, shared=True))
