"""Credential parsing from the environment and the scrubbing of secret values from messages."""

from __future__ import annotations

import json

import pytest

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.gcs import gcs_credentials
from datapool_pipeline.storage.secrets import redact


def _service_account_json() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps({
        "type": "service_account", "project_id": "datapool-test", "private_key_id": "0123456789abcdef0123",
        "private_key": pem, "client_email": "datapool@datapool-test.iam.gserviceaccount.com",
        "client_id": "1234567890", "token_uri": "https://oauth2.invalid/token",
    })


def test_gcs_service_account_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _service_account_json()
    monkeypatch.setenv("DATAPOOL_GCS_SERVICE_ACCOUNT_JSON", text)
    credentials = gcs_credentials()
    assert credentials.service_account_email == "datapool@datapool-test.iam.gserviceaccount.com"
    assert credentials.project_id == "datapool-test"
    private_key = json.loads(text)["private_key"]
    message = f"failed with key {private_key} and id 0123456789abcdef0123"
    assert private_key not in redact(message) and "0123456789abcdef0123" not in redact(message)

    monkeypatch.setenv("DATAPOOL_GCS_SERVICE_ACCOUNT_JSON", '{"type": "service_account", "private_key": "oops')
    with pytest.raises(ConfigError) as info:
        gcs_credentials()
    assert "oops" not in str(info.value) and "DATAPOOL_GCS_SERVICE_ACCOUNT_JSON" in str(info.value)


def test_redact_scrubs_every_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN")
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWFjY291bnQta2V5;EndpointSuffix=x",
    )
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=2024-01-01&ss=b&sp=rl&sig=c2lnbmF0dXJlLXZhbHVl")
    text = (
        "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY token FwoGZXIvYXdzEXAMPLETOKEN account key "
        "c2VjcmV0LWFjY291bnQta2V5 sas sv=2024-01-01&ss=b&sp=rl&sig=c2lnbmF0dXJlLXZhbHVl "
        "url https://a.example/x?X-Amz-Signature=abcdef123456&X-Amz-Security-Token=zzzzzzzz"
    )
    cleaned = redact(text)
    for secret in ("wJalrXUtnFEMI", "FwoGZXIvYXdz", "c2VjcmV0LWFjY291bnQta2V5", "c2lnbmF0dXJlLXZhbHVl",
                   "abcdef123456", "zzzzzzzz"):
        assert secret not in cleaned
    assert cleaned.startswith("key *** token *** account key ***")
