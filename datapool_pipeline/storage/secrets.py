"""The environment variables that hold datasource credentials, and scrubbing their values from text.

Backend error messages are built from error codes, but service messages are passed through `redact`
as a second line of defence before they reach an exception, a log line or metadata.
"""

from __future__ import annotations

import json
import os
import re

SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "DATAPOOL_S3_EXTERNAL_ID",
    "DATAPOOL_GCS_SERVICE_ACCOUNT_JSON",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
)
# Parts of composite secrets (connection strings, SAS query strings, service-account JSON).
_FIELD_RE = re.compile(r"(AccountKey|SharedAccessSignature)=([^;]+)|(?:^|[?&])sig=([^&]+)")
_MIN_LEN = 6  # shorter values would scrub ordinary words


def secret_env_names() -> list[str]:
    """The credential variables set now: the standard names, and the same names behind a prefix that a
    dataset's `credentials:` may name in datasets.yaml (RAW_AWS_SECRET_ACCESS_KEY, OUT_AZURE_STORAGE_KEY...)."""
    return sorted(
        name for name in os.environ
        if name in SECRET_ENV_VARS or any(name.endswith("_" + standard) for standard in SECRET_ENV_VARS)
    )


def secret_values() -> list[str]:
    """Every credential value currently in the environment, longest first."""
    values: set[str] = set()
    for name in secret_env_names():
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        values.add(value)
        values.add(value.lstrip("?"))
        for match in _FIELD_RE.finditer(value):
            values.update(g for g in match.groups()[1:] if g)
        if name.endswith("DATAPOOL_GCS_SERVICE_ACCOUNT_JSON"):
            values.update(_json_secrets(value))
    return sorted((v for v in values if len(v) >= _MIN_LEN), key=len, reverse=True)


def _json_secrets(text: str) -> list[str]:
    try:
        info = json.loads(text)
    except ValueError:
        return []
    if not isinstance(info, dict):
        return []
    return [str(info[k]) for k in ("private_key", "private_key_id", "client_secret", "refresh_token") if info.get(k)]


def redact(text: str) -> str:
    """`text` with every credential value from the environment replaced by '***'."""
    for value in secret_values():
        text = text.replace(value, "***")
    # Signatures of URLs not built from the environment (e.g. a SAS inside a service message).
    return re.sub(r"([?&](?:sig|X-Amz-Signature|X-Amz-Security-Token|X-Goog-Signature)=)[^&\s\"'<]+", r"\1***", text)
