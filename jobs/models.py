from __future__ import annotations

from django.db import models

from hotstate.jobs import JobState

# The states are hot state's (hotstate.jobs.JobState): the record keeps what Redis had.
STATE_CHOICES = [(state.value, state.value) for state in JobState]


class JobRecord(models.Model):
    """Durable history of a job, written when it ends; the live job is in Redis."""

    job_id = models.CharField(max_length=64, unique=True)
    request_id = models.CharField(max_length=200)
    tenant = models.CharField(max_length=100)
    session_id = models.CharField(max_length=64, blank=True)
    service_id = models.CharField(max_length=100)
    service_version = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=16, choices=STATE_CHOICES)
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
