"""Settings come from the environment, and bad values are refused with a clear message."""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from scheduler_project.settings import env_bool, env_int, env_list


def test_env_bool_refuses_a_value_that_is_not_a_boolean(monkeypatch) -> None:
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='maybe' is not a boolean"):
        env_bool("SOME_FLAG", False)


def test_env_int_refuses_values_below_the_minimum(monkeypatch) -> None:
    monkeypatch.setenv("SOME_PORT", "-1")
    with pytest.raises(ImproperlyConfigured, match="below its minimum 0"):
        env_int("SOME_PORT", 8000, minimum=0)


def test_env_list_splits_on_commas_and_ignores_blanks(monkeypatch) -> None:
    monkeypatch.setenv("SOME_HOSTS", "a.example, b.example,,")
    assert env_list("SOME_HOSTS", []) == ["a.example", "b.example"]


def test_database_follows_database_url() -> None:
    url = os.environ.get("DATABASE_URL", "")
    engine = settings.DATABASES["default"]["ENGINE"]
    if url.startswith("postgres"):
        assert engine == "django.db.backends.postgresql"
    else:
        assert engine == "django.db.backends.sqlite3"


@pytest.mark.django_db
def test_the_database_is_migrated_and_writable() -> None:
    User.objects.create_user("operator", password="a-long-test-password")
    assert User.objects.filter(username="operator").exists()


@pytest.mark.django_db
def test_models_and_migrations_are_in_step() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
