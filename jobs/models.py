from __future__ import annotations

from django.db import models


class JobState(models.TextChoices):
    CREATED = "CREATED"
    DISPATCHED = "DISPATCHED"
    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


TERMINAL_STATES = frozenset(
    {JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)


class JobRecord(models.Model):
    """Durable history of a job, written when it ends; the live job is in Redis."""

    job_id = models.CharField(max_length=64, unique=True)
    request_id = models.CharField(max_length=200)
    tenant = models.CharField(max_length=100)
    session_id = models.CharField(max_length=64, blank=True)
    service_id = models.CharField(max_length=100)
    service_version = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=16, choices=JobState.choices)
    attempts = models.PositiveSmallIntegerField(default=1)
    node_id = models.CharField(max_length=64, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    result_size = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "request_id"]),
            models.Index(fields=["state", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} {self.state}"
