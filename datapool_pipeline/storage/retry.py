"""How object-store requests are retried: the same attempt count for S3, GCS and Azure, and the backoff.

Every request (listing page, stat, read, write, conditional write, delete) that fails with a transient
error (HTTP 5xx except 501/505, throttling, a reset or refused connection, a timeout) is sent again after
a jittered exponential backoff, up to DATAPOOL_STORAGE_RETRY_ATTEMPTS attempts in all. Writes are
whole-object PUTs, and a repeat sends the same bytes again, so it is safe; the conditional commit write
recognises its own object if an earlier attempt was applied but its response was lost.

S3 uses botocore's "standard" retry mode (its backoff: up to 50 ms x 2^n for server errors, 1 s x 2^n for
throttling, at most 20 s); GCS and Azure wait up to DATAPOOL_STORAGE_RETRY_BASE_SECONDS x 2^n (at most
30 s) before retry n+1.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from datapool_pipeline.errors import ConfigError

ATTEMPTS_ENV = "DATAPOOL_STORAGE_RETRY_ATTEMPTS"
BASE_ENV = "DATAPOOL_STORAGE_RETRY_BASE_SECONDS"
RETRY_ENV = (ATTEMPTS_ENV, BASE_ENV)
DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    attempts: int
    """Attempts per request, the first one included (1 = no retry)."""
    base_seconds: float
    """Upper bound of the first backoff (GCS, Azure); doubled for each further retry."""

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0-based): full jitter, capped."""
        return random.uniform(0.0, min(self.base_seconds * 2**retry, MAX_BACKOFF_SECONDS))


def retry_settings() -> RetrySettings:
    raw_attempts = os.environ.get(ATTEMPTS_ENV, "").strip()
    raw_base = os.environ.get(BASE_ENV, "").strip()
    try:
        attempts = int(raw_attempts) if raw_attempts else DEFAULT_ATTEMPTS
    except ValueError:
        attempts = 0
    if not 1 <= attempts <= 20:
        raise ConfigError(f"{ATTEMPTS_ENV}: must be a whole number from 1 to 20, got {raw_attempts!r}")
    try:
        base = float(raw_base) if raw_base else DEFAULT_BASE_SECONDS
    except ValueError:
        base = -1.0
    if not 0.0 < base <= MAX_BACKOFF_SECONDS:
        raise ConfigError(f"{BASE_ENV}: must be a number of seconds above 0 and at most 30, got {raw_base!r}")
    return RetrySettings(attempts, base)
