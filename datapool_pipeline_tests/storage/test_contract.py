"""The Storage contract, held by every object-store backend against its real server on 127.0.0.1.

Every backend here gets its client from the Dagster storage resource (dagster-aws S3Resource, dagster-gcp
GCSResource, dagster-azure AzureBlobStorageResource) built for the backend's environment, as the
definitions, CLI and sensors do; the scenario and access tests cover clients made from the environment."""

from __future__ import annotations

import os
import threading
import urllib.request
from pathlib import Path

import pytest

from datapool_pipeline.assets.resources import (
    DatapoolAzureBlobStorageResource,
    DatapoolGCSResource,
    DatapoolS3Resource,
    storage_at,
    storage_resource,
)
from datapool_pipeline.media.video import FrameStream, extract_frames_png
from datapool_pipeline.storage import Storage, StorageError
from datapool_pipeline_tests.helpers import add_videos
from datapool_pipeline_tests.storage.backends import Backend

# Slow tier: real object-store servers (moto, gcp-storage-emulator, Azurite).
pytestmark = pytest.mark.slow

_RESOURCE_TYPES = {"s3": DatapoolS3Resource, "gcs": DatapoolGCSResource, "azure": DatapoolAzureBlobStorageResource}


def open_storage(uri: str) -> Storage:
    """The storage of a location through its Dagster resource (the resource's client, our backend)."""
    resource = storage_resource(uri)
    scheme = {"s3://": "s3", "gs://": "gcs", "az://": "azure"}[uri[:5]]
    assert isinstance(resource, _RESOURCE_TYPES[scheme])
    storage = storage_at(uri, resource)
    assert storage._client_factory is not None  # the resource's client, not one made from the environment
    return storage


def test_list_is_paginated_streamed_in_key_order_and_scoped_to_the_prefix(backend: Backend) -> None:
    uri = backend.location("root")
    storage = open_storage(uri)
    keys = [f"b/{i:02d}.bin" for i in range(7)] + ["a.bin", "c/d/e.bin"]
    for i, key in enumerate(keys):
        storage.write_bytes(key, b"x" * i)
    # A sibling prefix that shares the root's first letters must not leak into the listing.
    open_storage(uri + "2").write_bytes("other.bin", b"no")
    storage.page_size = 2  # 9 objects -> 5 requests

    listing = storage.list()
    first = next(listing)
    assert first.key == "a.bin"
    infos = [first, *listing]
    assert [i.key for i in infos] == sorted(keys)
    sizes = {k: i for i, k in enumerate(keys)}
    assert all(info.size == sizes[info.key] for info in infos)
    assert all(info.etag and info.mtime > 0 for info in infos)
    assert [i.key for i in storage.list("b/")] == [f"b/{i:02d}.bin" for i in range(7)]
    assert list(storage.list("missing/")) == []


def test_stat_read_write_overwrite_delete(backend: Backend) -> None:
    storage = open_storage(backend.location())
    assert storage.stat("k/v.txt") is None
    storage.write_bytes("k/v.txt", b"one")
    first = storage.stat("k/v.txt")
    assert first is not None and first.size == 3
    assert storage.read_bytes("k/v.txt") == b"one"
    storage.write_bytes("k/v.txt", b"second")
    second = storage.stat("k/v.txt")
    assert second is not None and second.size == 6 and second.version != first.version
    assert b"".join(storage.read_range("k/v.txt", 1, 3)) == b"eco"  # type: ignore[attr-defined]
    storage.delete("k/v.txt")
    storage.delete("k/v.txt")  # already gone: no error
    assert storage.stat("k/v.txt") is None
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("k/v.txt")
    with pytest.raises(ValueError):
        storage.write_bytes("../escape", b"")


def test_put_if_absent_lets_exactly_one_concurrent_writer_win(backend: Backend) -> None:
    storage = open_storage(backend.location())
    assert storage.put_if_absent("commits/0001.json", b"first")
    assert not storage.put_if_absent("commits/0001.json", b"late")
    assert storage.read_bytes("commits/0001.json") == b"first"

    results: dict[int, bool] = {}
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        results[i] = storage.put_if_absent("commits/0002.json", f"writer-{i}".encode())

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(results) == 6 and len(winners) == 1
    assert storage.read_bytes("commits/0002.json") == f"writer-{winners[0]}".encode()


@pytest.mark.parametrize("mode", ["stream", "download"])
def test_local_source_is_decodable_by_ffmpeg_and_cleaned_up(
    backend: Backend, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_videos(tmp_path, ["clip.mp4"], seconds=2.0, fps=10)
    storage = open_storage(backend.location("videos"))
    storage.write_bytes("in/clip.mp4", (tmp_path / "clip.mp4").read_bytes())
    monkeypatch.setenv("DATAPOOL_REMOTE_MEDIA", mode)

    with storage.local_source("in/clip.mp4") as source:
        stream = FrameStream(source, size=64)
        frames = sum(1 for _ in stream)
        pngs = extract_frames_png(source, [3, 17])
    assert stream.error is None and frames == 20
    assert set(pngs) == {3, 17} and all(p.startswith(b"\x89PNG") for p in pngs.values())
    if mode == "stream":
        assert source.startswith("http://127.0.0.1:")
        with pytest.raises(OSError):  # the loopback server is gone with the context
            urllib.request.urlopen(source, timeout=2)
    else:
        assert not os.path.exists(source)


def test_local_source_range_requests(backend: Backend) -> None:
    storage = open_storage(backend.location())
    data = bytes(range(256)) * 40
    storage.write_bytes("blob.bin", data)
    with storage.local_source("blob.bin") as url:
        req = urllib.request.Request(url, headers={"Range": "bytes=100-299"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
            assert resp.read() == data[100:300]
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-10"}), timeout=10) as resp:
            assert resp.read() == data[-10:]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200 and resp.read() == data
        wrong = url.rsplit("/", 2)[0] + "/not-the-token/blob.bin"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=10)


def test_missing_bucket_is_a_clear_error(backend: Backend) -> None:
    storage = open_storage(f"{backend.scheme}no-such-bucket-{os.getpid()}/data")
    with pytest.raises(StorageError) as info:
        list(storage.list())
    message = str(info.value)
    assert storage.uri in message and "does not exist" in message
