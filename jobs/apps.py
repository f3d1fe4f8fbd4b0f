from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from core.runtime import DUTIES, Duty
        from jobs import frames
        from jobs.history import history_flush
        from jobs.services.reports import mna_run
        from jobs.services.timers import timers_run

        frames.register()
        DUTIES.register(Duty("history", 1.0, history_flush, on_stop=history_flush))
        DUTIES.register(Duty("timers", 0.2, timers_run, shared=True))
        DUTIES.register(Duty("mna", 0.05, mna_run, shared=True))
