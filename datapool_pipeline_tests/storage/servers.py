"""Fixtures (a pytest plugin of the root conftest): real object-store servers on 127.0.0.1 (moto S3,
gcp-storage-emulator, Azurite) and a backend per test; their helpers are in backends.py.

Servers are started once per test session on free ports and stopped at the end; every test gets its own
bucket / container, and its credentials through environment variables (monkeypatched).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from datapool_pipeline_tests.storage.backends import (
    AZURITE_ACCOUNT,
    BACKENDS,
    REPO,
    Backend,
    free_port,
    stop_process,
    wait_for_port,
)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _honour_gcs_generation_preconditions() -> None:
    """gcp-storage-emulator ignores ifGenerationMatch on uploads; the real service does not. Add that
    check to the emulator's upload handler (its server handles one request at a time, so check + create
    is atomic there), so that put_if_absent is tested against the semantics of the real service."""
    from gcp_storage_emulator import server as gserver
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.insert
    if getattr(original, "_honours_generation", False):
        return

    def insert(request, response, storage, *args, **kwargs):  # noqa: ANN001, ANN202
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            name = (request.query.get("name") or [None])[0]
            if name is None and isinstance(request.data, dict):
                name = (request.data.get("meta") or {}).get("name")
            try:
                current = str(storage.get_file_obj(request.params["bucket_name"], name).get("generation", "0"))
            except NotFound:
                current = "0"
            if current != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
        return original(request, response, storage, *args, **kwargs)

    insert._honours_generation = True  # type: ignore[attr-defined]
    objects.insert = insert
    for _, handlers in gserver.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = insert


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    from gcp_storage_emulator.server import create_server

    _honour_gcs_generation_preconditions()
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._api._httpd.server_port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = REPO / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        found = shutil.which("azurite-blob")
        if not found:
            pytest.fail("azurite-blob not found: run `npm install` in the repository (scripts/setup.sh test does)")
        binary = Path(found)
    port = free_port()
    location = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen(
        [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        stop_process(proc)




@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return Backend("s3", s3_endpoint, monkeypatch).use()


@pytest.fixture
def gcs(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return Backend("gcs", gcs_endpoint, monkeypatch).use()


@pytest.fixture
def azure(azurite_url: str, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return Backend("azure", azurite_url, monkeypatch).use()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


