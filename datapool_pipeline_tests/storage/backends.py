"""Object-store test servers and backends, shared by the storage and reliability tests (the fixtures that
start them once per session are in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datapool_pipeline.storage import open_storage

REPO = Path(__file__).resolve().parents[2]
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development account key (not a secret: it is the emulator's built-in default).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BACKENDS = ("s3", "gcs", "azure")
_CLOUD_ENV = (
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "DATAPOOL_S3_ROLE_ARN", "DATAPOOL_S3_EXTERNAL_ID",
    "DATAPOOL_GCS_SERVICE_ACCOUNT_JSON", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT", "DATAPOOL_REMOTE_MEDIA",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def iam_moto_server(setup_calls: int) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server of its own that enforces IAM once it has served `setup_calls` requests (the caller's
    set-up of users, keys and policies). Yields its endpoint and boto3 client arguments for the set-up."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(setup_calls)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        yield endpoint, {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
                         "aws_secret_access_key": "setup"}
    finally:
        stop_process(proc)


@dataclass
class Backend:
    name: str
    endpoint: str
    monkeypatch: pytest.MonkeyPatch

    def use(self) -> Backend:
        """Point the environment at this backend's server with working credentials."""
        for var in _CLOUD_ENV:
            self.monkeypatch.delenv(var, raising=False)
        if self.name == "s3":
            self.monkeypatch.setenv("AWS_ENDPOINT_URL", self.endpoint)
            self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTDATAPOOL")
            self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-" + uuid.uuid4().hex)
            self.monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        elif self.name == "gcs":
            self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.endpoint)
        else:
            self.monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", self.endpoint)
            self.monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
        return self

    @property
    def scheme(self) -> str:
        return {"s3": "s3://", "gcs": "gs://", "azure": "az://"}[self.name]

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"dp-{uuid.uuid4().hex[:16]}"
        if self.name == "s3":
            import boto3

            boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        elif self.name == "gcs":
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
        else:
            from azure.storage.blob import BlobServiceClient

            service = BlobServiceClient(
                self.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
            )
            service.create_container(name)
        return name

    def location(self, prefix: str = "data") -> str:
        """A fresh bucket / container; returns `scheme://bucket/prefix`."""
        return f"{self.scheme}{self.create_bucket()}/{prefix}"


def upload_folder(folder: Path, uri: str) -> list[str]:
    """Copy every file of a local folder to a datasource (keys relative to the folder)."""
    storage = open_storage(uri)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        storage.write_bytes(key, path.read_bytes())
        keys.append(key)
    return keys


def count_list_requests(backend: Backend, storage: Any) -> list[str]:
    """Listing requests `storage` sends from now on (S3: botocore events; Azure: a response hook)."""
    calls: list[str] = []
    if backend.name == "s3":
        storage.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.append("list"))
    elif backend.name == "azure":
        container = storage.client

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(container, name)

            def list_blobs(self, *args: Any, **kwargs: Any) -> Any:
                return container.list_blobs(*args, raw_response_hook=lambda _: calls.append("list"), **kwargs)

        storage.__dict__["client"] = Counting()
    return calls
