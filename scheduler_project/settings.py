"""Settings for the scheduler.

Every value that an operator may change is read from the environment here, and only here. The
README's configuration table lists each variable with its default; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SCHEDULER_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum {minimum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Django core -----------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)

# The fallback key exists so that a fresh clone runs with no set-up; it is public, so any
# deployment reachable by others must set DJANGO_SECRET_KEY (docs/deployment.md).
DEV_SECRET_KEY = "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "scheduler_project.apps.SchedulerConfig",
    "core",
    "hotstate",
    "nodes",
    "jobs",
    "sessions.apps.ClientSessionsConfig",
    "dashboard.apps.DashboardConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# PROTOCOL.md: routes answer with or without a trailing slash, never with a redirect.
APPEND_SLASH = False

ROOT_URLCONF = "scheduler_project.urls"
# The WebSocket routes of each app (PROTOCOL.md: /ws/node/ and /ws/session/).
WEBSOCKET_ROUTES = ["nodes.routing.websocket_urlpatterns", "sessions.routing.websocket_urlpatterns"]
ASGI_APPLICATION = "scheduler_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Security (behind TLS in production; see docs/deployment.md) --------------------------------

SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = False
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Listening address (used by the run command and `serve`) ----------------------------------

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=0)

# --- Redis Cluster (hot state and channel layer) ----------------------------------------------

# Base port of the local development cluster: 3 primaries + 3 replicas on BASE .. BASE+5.
REDIS_CLUSTER_PORT = env_int("REDIS_CLUSTER_PORT", 7100, minimum=1)
REDIS_CLUSTER_URL = env_str("REDIS_CLUSTER_URL", f"redis://127.0.0.1:{REDIS_CLUSTER_PORT}")
# Versioned key prefix: a schema change bumps it so that old and new keys never mix.
HOTSTATE_PREFIX = env_str("HOTSTATE_PREFIX", "gs1")
# Timeouts bound every Redis call, so that a lost cluster is reported, never waited on.
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 1.0, minimum=0.05)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 5.0, minimum=0.05)
# How long a durable write (a job's creation, a request's binding) waits for one replica to
# have it before the scheduler answers anyway (DESIGN.md, "Durability and recovery"); 0: no wait.
DURABLE_WAIT_MS = env_int("DURABLE_WAIT_MS", 50, minimum=0)
# The Redis calls of one submit end within this many seconds all together, however many primaries
# stall one after the other; past it the submit is answered DEPENDENCY_DOWN (retry, same id).
SUBMIT_DEADLINE_S = env_float("SUBMIT_DEADLINE_S", 5.0, minimum=0.1)

# --- Protocol limits and scheduler tunables (PROTOCOL.md names) -------------------------------

AUTH_TIMEOUT = env_float("AUTH_TIMEOUT", 5.0, minimum=0.1)
MAX_FRAME_BYTES = env_int("MAX_FRAME_BYTES", 1024 * 1024, minimum=1024)
MAX_PAYLOAD_BYTES = env_int("MAX_PAYLOAD_BYTES", 256 * 1024, minimum=1)
RATE_LIMIT_PER_S = env_float("RATE_LIMIT_PER_S", 50.0, minimum=0.1)
RATE_LIMIT_BURST = env_int("RATE_LIMIT_BURST", 100, minimum=1)
# How long a peer may stay over its rate limit after the first refusal before it is closed (4429).
RATE_LIMIT_PERSIST_S = env_float("RATE_LIMIT_PERSIST_S", 10.0, minimum=0.1)
HEARTBEAT_INTERVAL_MS = env_int("HEARTBEAT_INTERVAL_MS", 5000, minimum=100)
ACK_TIMEOUT = env_float("ACK_TIMEOUT", 5.0, minimum=0.1)
MAX_ATTEMPTS = env_int("MAX_ATTEMPTS", 3, minimum=1)
DEFAULT_JOB_TIMEOUT_MS = env_int("DEFAULT_JOB_TIMEOUT_MS", 60_000, minimum=1)
MAX_JOB_TIMEOUT_MS = env_int("MAX_JOB_TIMEOUT_MS", 600_000, minimum=1)
REQUEST_LEASE_GRACE_MS = env_int("REQUEST_LEASE_GRACE_MS", 300_000, minimum=0)
RESERVATION_TTL = env_float("RESERVATION_TTL", 30.0, minimum=1.0)
MNA_MARK_TTL = env_float("MNA_MARK_TTL", 60.0, minimum=0.1)
# One expensive MODEL_NOT_AVAILABLE action per (service, version) per window; a node's reports
# beyond the rate limit (per minute) are dropped and counted.
MNA_DEBOUNCE_WINDOW = env_float("MNA_DEBOUNCE_WINDOW", 30.0, minimum=0.1)
MNA_NODE_RATE_LIMIT = env_int("MNA_NODE_RATE_LIMIT", 30, minimum=1)
SESSION_RESUME_TTL = env_float("SESSION_RESUME_TTL", 300.0, minimum=1.0)
# Selection skips nodes whose reported load is above these percentages.
SELECT_MAX_CPU_PCT = env_float("SELECT_MAX_CPU_PCT", 100.0, minimum=0.0)
SELECT_MAX_MEM_PCT = env_float("SELECT_MAX_MEM_PCT", 95.0, minimum=0.0)
SELECT_MAX_GPU_PCT = env_float("SELECT_MAX_GPU_PCT", 100.0, minimum=0.0)

# --- Processes ---------------------------------------------------------------------------------

# "all": serve sockets and run every duty (one process is a whole scheduler); "instance": serve
# sockets and run the per-process duties only; "worker": run the shared duties (timers,
# MODEL_NOT_AVAILABLE, clean-up) without sockets. `serve` starts instances and workers.
SCHEDULER_ROLE = env_str("SCHEDULER_ROLE", "all")
if SCHEDULER_ROLE not in {"all", "instance", "worker"}:
    raise ImproperlyConfigured(f"SCHEDULER_ROLE={SCHEDULER_ROLE!r}: use all, instance or worker")
# Seconds a draining instance waits for its peers to leave before it stops anyway.
DRAIN_GRACE = env_float("DRAIN_GRACE", 10.0, minimum=0.0)

# --- Channel layer ----------------------------------------------------------------------------

# "cluster" is the Redis Cluster layer (clusterlayer, docs/channel-layer.md) on the hot-state
# cluster, which several instances need; "memory" keeps everything in one process (tests, a single
# daphne); "redis" is channels_redis on a standalone Redis.
CHANNEL_LAYER_BACKEND = env_str("CHANNEL_LAYER", "cluster")
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if CHANNEL_LAYER_BACKEND == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
elif CHANNEL_LAYER_BACKEND == "cluster":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "clusterlayer.ClusterChannelLayer",
            "CONFIG": {
                "url": REDIS_CLUSTER_URL,
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi"),
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
                "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                # A blocking read must end before the socket timeout would cut it.
                "block_timeout": min(2.0, REDIS_SOCKET_TIMEOUT / 2),
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [env_str("CHANNEL_REDIS_URL", "redis://127.0.0.1:6379/0")]},
        }
    }
else:
    raise ImproperlyConfigured(
        f"CHANNEL_LAYER={CHANNEL_LAYER_BACKEND!r}: use memory, cluster or redis"
    )

# --- Logging ----------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
    },
}
