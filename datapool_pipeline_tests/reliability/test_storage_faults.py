"""Storage faults against the real emulators (moto S3, gcp-storage-emulator, Azurite), injected by a proxy
on 127.0.0.1 between the SDK clients and the emulator (fault_proxy.py): transient 5xx / throttling answers
and connection resets are retried with backoff and the operation or run succeeds; a persistent fault fails
with a one-line message naming the datasource, and nothing is half-committed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.storage import StorageError, open_storage
from datapool_pipeline.storage.retry import ATTEMPTS_ENV, BASE_ENV
from datapool_pipeline.storage.secrets import secret_values
from datapool_pipeline_tests.helpers import add_videos, write_datasets_yaml
from datapool_pipeline_tests.reliability.fault_proxy import FaultProxy
from datapool_pipeline_tests.storage.backends import Backend

# Slow tier: object-store servers behind a fault-injecting proxy, real runs.
pytestmark = pytest.mark.slow

ENDPOINT_ENV = {"s3": "AWS_ENDPOINT_URL", "gcs": "STORAGE_EMULATOR_HOST", "azure": "AZURE_STORAGE_ACCOUNT_URL"}
# How an object write looks on the wire: S3 and Azure PUT the key's path; a GCS upload POSTs to the bucket's
# upload URL and names the object in the body.
WRITE_METHOD = {"s3": "PUT", "gcs": "POST", "azure": "PUT"}
# The transient answers each service gives under load. Azure Storage throttles with 503 ServerBusy (its SDK
# does not retry 429, which the service does not send), S3 with 503 SlowDown, GCS with 429 and 503.
TRANSIENT = {"s3": [503, "reset", 429, 500], "gcs": [503, "reset", 429, 500], "azure": [503, "reset", 500]}


def writes_to(backend: str, key_pattern: str) -> dict[str, str]:
    """Fault-rule filters matching writes of keys that match key_pattern (a regex)."""
    if backend == "gcs":
        return {"method": "POST", "body": rf'"name": ?"[^"]*{key_pattern}'}
    return {"method": "PUT", "path": key_pattern}


@pytest.fixture
def faulty(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Backend, FaultProxy]]:
    """(backend, proxy): the backend's buckets are created directly on the emulator; the storage layer
    (and `datapool run`) reaches it through the proxy. Short backoff, so that retries take milliseconds."""
    name = request.param
    backend: Backend = request.getfixturevalue(name)
    monkeypatch.setenv(BASE_ENV, "0.05")
    upstream = urlparse(backend.endpoint)
    with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80, flavor=name) as proxy:
        monkeypatch.setenv(ENDPOINT_ENV[name], proxy.url + upstream.path)
        yield backend, proxy


BACKENDS = ["s3", "gcs", "azure"]


# -- the storage layer, operation by operation ------------------------------------------------------------
@pytest.mark.parametrize("faulty", BACKENDS, indirect=True)
def test_transient_faults_are_retried_for_every_operation(faulty: tuple[Backend, FaultProxy]) -> None:
    backend, proxy = faulty
    storage = open_storage(backend.location("pool"))
    kinds = TRANSIENT[backend.name]
    data = bytes(range(256)) * 64
    results = {}

    def with_faults(index: int, op):  # noqa: ANN001, ANN202 - two faults on the next requests, whatever they are
        proxy.add_fault(kinds[index % len(kinds)])
        proxy.add_fault(kinds[(index + 1) % len(kinds)])
        result = op()
        assert proxy.pending() == 0, "the faults were not all delivered"
        return result

    operations = {
        "write": lambda: storage.write_bytes("a/one.bin", data),
        "put_if_absent": lambda: storage.put_if_absent("a/two.json", b'{"n": 2}'),
        "stat": lambda: storage.stat("a/one.bin"),
        "read": lambda: storage.read_bytes("a/one.bin"),
        "read_range": lambda: b"".join(storage.read_range("a/one.bin", 10, 99)),
        "list": lambda: [i.key for i in storage.list("a/")],
        "delete": lambda: storage.delete("a/two.json"),
    }
    started = time.monotonic()
    for index, (name, op) in enumerate(operations.items()):
        results[name] = with_faults(index, op)
    elapsed = time.monotonic() - started

    assert results["put_if_absent"] is True
    assert results["stat"] is not None and results["stat"].size == len(data)
    assert results["read"] == data
    assert results["read_range"] == data[10:100]
    assert results["list"] == ["a/one.bin", "a/two.json"]
    assert [i.key for i in storage.list("a/")] == ["a/one.bin"]
    assert len(proxy.injected()) == 2 * len(operations)
    assert elapsed < 60, f"retries took {elapsed:.1f}s"


LISTING = {"s3": r"list-type=2", "azure": r"comp=list"}


# gcp-storage-emulator ignores maxResults (one page for any listing), so GCS cannot be paged here.
@pytest.mark.parametrize("faulty", ["s3", "azure"], indirect=True)
def test_each_listing_page_has_its_own_attempts(
    faulty: tuple[Backend, FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long listing survives more transient faults in total than one request's attempt budget."""
    backend, proxy = faulty
    monkeypatch.setenv(ATTEMPTS_ENV, "3")
    storage = open_storage(backend.location("pool"))
    keys = [f"k/{i}.bin" for i in range(3)]
    for key in keys:
        storage.write_bytes(key, b"x")
    storage.page_size = 1
    for page in range(3):  # every page fails twice, then answers: 6 faults, 3 attempts per request
        if page:
            proxy.add_fault("forward", method="GET", path=LISTING[backend.name])
        proxy.add_fault(503, method="GET", path=LISTING[backend.name])
        proxy.add_fault("reset", method="GET", path=LISTING[backend.name])
    assert [i.key for i in storage.list("k/")] == keys
    assert proxy.pending() == 0 and len(proxy.injected()) == 6


@pytest.mark.parametrize("faulty", BACKENDS, indirect=True)
def test_conditional_write_whose_response_was_lost(faulty: tuple[Backend, FaultProxy]) -> None:
    """The emulator applies the create, the client sees a reset and retries; the retry is refused
    ("exists") but the object is ours: put_if_absent reports success, and still refuses a second writer."""
    backend, proxy = faulty
    storage = open_storage(backend.location("pool"))
    proxy.add_fault("reset-after", **writes_to(backend.name, "commits/00000001"))
    assert storage.put_if_absent("commits/00000001.json", b'{"run": "mine"}') is True
    assert proxy.pending() == 0
    writes = [s for s in proxy.seen if s.method == WRITE_METHOD[backend.name]]
    assert len(writes) >= 2, "the SDK did not send the write again"
    assert storage.put_if_absent("commits/00000001.json", b'{"run": "other"}') is False
    assert storage.read_bytes("commits/00000001.json") == b'{"run": "mine"}'


@pytest.mark.parametrize("kind", [500, "reset"])
@pytest.mark.parametrize("faulty", BACKENDS, indirect=True)
def test_persistent_fault_gives_up_with_a_clear_error(
    faulty: tuple[Backend, FaultProxy], kind: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, proxy = faulty
    monkeypatch.setenv(ATTEMPTS_ENV, "3")
    storage = open_storage(backend.location("pool"))
    proxy.add_fault(kind, count=None, method=WRITE_METHOD[backend.name])
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.write_bytes("x/y.bin", b"payload")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{storage.display('x/y.bin')}: writing failed: gave up after 3 attempt(s): "), message
    assert ("server error" if kind == 500 else "connection failed") in message, message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not [s for s in secret_values() if s in message]
    assert len(proxy.injected()) == 3  # the configured number of attempts, no more
    assert elapsed < 20, f"giving up took {elapsed:.1f}s"
    # Reads still work (only writes fail), and a write succeeds once the fault is gone.
    assert storage.stat("x/y.bin") is None
    proxy.clear_faults()
    storage.write_bytes("x/y.bin", b"payload")
    assert storage.read_bytes("x/y.bin") == b"payload"


# -- end to end: `datapool run` with the output datasource behind the proxy ---------------------------------
def _dataset(tmp_path: Path, backend: Backend) -> tuple[Path, str]:
    input_dir = tmp_path / "videos"
    add_videos(input_dir, ["a.mov"], seconds=1.5)
    output_uri = backend.location("lightly")
    return write_datasets_yaml(tmp_path / "datasets.yaml", "vids", "VIDEOS", str(input_dir), output_uri), output_uri


def _reason(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(("datapool: aborted", "datapool: error"))]
    assert lines, err[-3000:]
    return lines[-1]


@pytest.mark.parametrize("faulty", BACKENDS, indirect=True)
def test_run_commits_through_transient_faults_on_the_commit_writes(
    faulty: tuple[Backend, FaultProxy], cli, tmp_path: Path  # noqa: ANN001
) -> None:
    backend, proxy = faulty
    yaml_path, output_uri = _dataset(tmp_path, backend)
    throttle = 429 if backend.name != "azure" else 503
    # The tag's tables, then its manifest (the atomic commit): every write hit, the manifest twice, the
    # second time after the store applied it (the response is lost: the retry must recognise its object).
    proxy.add_fault(503, **writes_to(backend.name, "datapool/samples/"))
    proxy.add_fault("reset", **writes_to(backend.name, "datapool/samples/"))
    proxy.add_fault(throttle, **writes_to(backend.name, "datapool/processed/"))
    proxy.add_fault(500, **writes_to(backend.name, "datapool/commits/"))
    proxy.add_fault("reset-after", **writes_to(backend.name, "datapool/commits/"))

    result = cli("--datasets", str(yaml_path), "run", "vids", "--n-samples", "5")
    assert result.code == 0, result.err[-3000:]
    assert proxy.pending() == 0, [(s.method, s.path, s.action) for s in proxy.injected()]

    state = DatapoolStore(open_storage(output_uri)).load_state()
    assert len(state.commits) == 1 and state.tags == [state.commits[0].tag]
    assert state.commits[0].tag in result.out
    ids = state.samples["sample_id"].to_list()
    assert len(ids) == len(set(ids)) == 5
    output = open_storage(output_uri)
    assert {i.key for i in output.list("frames/")} == set(ids)
    listed = {i.key for i in output.list("datapool/")}
    assert {state.commits[0].samples_file, state.commits[0].processed_file} <= listed
    assert not [k for k in listed if k.startswith(("datapool/samples/", "datapool/processed/"))
                and k not in (state.commits[0].samples_file, state.commits[0].processed_file)]


@pytest.mark.parametrize("faulty", BACKENDS, indirect=True)
def test_persistent_output_fault_fails_the_run_and_commits_nothing(
    faulty: tuple[Backend, FaultProxy], cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    backend, proxy = faulty
    monkeypatch.setenv(ATTEMPTS_ENV, "3")
    yaml_path, output_uri = _dataset(tmp_path, backend)
    output = open_storage(output_uri)
    run = ("--datasets", str(yaml_path), "run", "vids", "--n-samples", "5")
    gave_up = "writing failed: gave up after 3 attempt(s): server error ("

    # 1. Every write to the output fails: the run stops at its access check, before any work.
    proxy.add_fault(500, count=None, method=WRITE_METHOD[backend.name])
    first = cli(*run)
    assert first.code == 2, first.err[-3000:]
    reason = _reason(first.err)
    assert reason.startswith(f"datapool: error: dataset 'vids': cannot write to the output datasource {output.uri}: ")
    assert gave_up in reason and "HTTP 500)" in reason, reason
    assert [i.key for i in output.list()] == []
    assert DatapoolStore(output).load_state().commits == []

    # 2. Without the fault: a first tag.
    proxy.clear_faults()
    assert cli(*run).code == 0
    before = DatapoolStore(output).load_state()
    assert len(before.commits) == 1

    # 3. New video; only the commit's writes fail (tables and manifest), persistently: the run fails at the
    #    commit with the location in its message, and the datapool is exactly what it was.
    add_videos(tmp_path / "videos", ["b.mov"], first_source=1, seconds=1.5)
    proxy.add_fault(500, count=None, **writes_to(backend.name, "datapool/(samples|processed|commits)/"))
    third = cli(*run, "--use-datapool")
    assert third.code == 1, third.err[-3000:]
    reason = _reason(third.err)
    assert reason.startswith(f"datapool: aborted: {output.uri}/datapool/samples/"), reason
    assert gave_up in reason and "HTTP 500)" in reason, reason
    for text in (first.out, first.err, third.out, third.err):
        assert not [s for s in secret_values() if s in text]
    after = DatapoolStore(output).load_state()
    assert after.commits == before.commits
    assert after.samples.equals(before.samples)
    assert [i.key for i in output.list("datapool/commits/")] == ["datapool/commits/00000001.json"]

    # 4. The fault is gone: the next run commits the new video's frames, and the datapool is consistent.
    proxy.clear_faults()
    fourth = cli(*run, "--use-datapool")
    assert fourth.code == 0, fourth.err[-3000:]
    state = DatapoolStore(output).load_state()
    assert [c.n_samples for c in state.commits] == [5, 5] and len(set(state.tags)) == 2
    ids = state.samples["sample_id"].to_list()
    assert len(ids) == len(set(ids)) == 10
    assert {i.key for i in output.list("frames/")} == set(ids)
    assert [i.key for i in output.list("datapool/staging/")] == []
    parts = {i.key for i in output.list("datapool/") if i.key.startswith(("datapool/samples/", "datapool/processed/"))}
    assert parts == {f for c in state.commits for f in (c.samples_file, c.processed_file)}
