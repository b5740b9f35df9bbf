"""Sensor tick after the first, on a real moto S3 server (issue 12 item 1): requests and time of a tick
that finds 10 new objects in a bucket of 10^3 and of 10^5 objects.

Set-up per size N: a moto server (its own process on 127.0.0.1, counting the requests it serves per
bucket and operation) holds the input bucket of N objects with date-ordered keys (`dayDDDD/clip_I.mp4`,
new files sort last) and the output datasource (datapool state on S3 too). Every object is already
claimed (registry + N dynamic partitions in a real SQLite Dagster instance, as after a history of
runs); the sensor's first pass runs tick after tick until it reaches the end of the bucket. Then 10 new
objects are written and one tick is measured, `--repeats` times (10 new objects each time).

Reported per size: the measured tick's listing / read requests (input and output) and write requests,
the tick's time and the part of it the moto server spent answering; the baseline is what the
previous sensor did at that point, listing the bucket from its first key (its request count and time,
measured as a full listing). Targets: <= 5 list/read requests beyond O(new) (one page of 1,000 keys for
10 new objects); tick time at 10^5 within 2x of the tick at 10^3.

Usage: python benchmarks/sensor_resume.py [--quick] [--sizes 1000,100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENSOR = "bench_new_files"
PARTITIONS = "bench__shards"
NEW = 10


# -- the moto server, with request counting (runs in its own process) -------------------------------
def serve(port: int) -> None:
    """moto's WSGI app behind a counter: GET /__counts returns {bucket: {op: n}} and POST /__reset
    clears it; POST /__fill?bucket=B&start=S&n=N creates N empty objects via moto's backend directly."""
    import logging
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = DomainDispatcherApplication(create_backend_app)
    counts: dict[str, dict[str, int]] = {}
    busy = [0.0]
    lock = threading.Lock()

    def fill(query: dict[str, str]) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        bucket, start, n = query["bucket"], int(query["start"]), int(query["n"])
        for i in range(start, start + n):
            backend.put_object(bucket, key_name(i), b"")

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        from urllib.parse import parse_qsl

        path = environ.get("PATH_INFO", "")
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if path == "/__counts":
            with lock:
                body = json.dumps({"counts": counts, "server_seconds": busy[0]}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == "/__reset":
            with lock:
                counts.clear()
                busy[0] = 0.0
            start_response("200 OK", [])
            return [b""]
        if path == "/__fill":
            fill(query)
            start_response("200 OK", [])
            return [b""]
        method = environ["REQUEST_METHOD"]
        parts = path.lstrip("/").split("/", 1)
        bucket = parts[0]
        has_key = len(parts) > 1 and parts[1] != ""
        if method == "GET" and not has_key:
            op = "list" if "list-type" in query or not query else f"get-{'&'.join(sorted(query))}"
        else:
            op = {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete", "POST": "post"}.get(method, method)
        started = time.perf_counter()
        out = list(app(environ, start_response))
        with lock:
            counts.setdefault(bucket, {}).setdefault(op, 0)
            counts[bucket][op] += 1
            busy[0] += time.perf_counter() - started
        return out

    server = make_server("127.0.0.1", port, counting, threaded=True, request_handler=MotoRequestHandler)
    print("ready", flush=True)
    server.serve_forever()


def key_name(i: int) -> str:
    return f"day{i // 1000:04d}/clip_{i:08d}.mp4"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def call(endpoint: str, path: str, method: str = "POST") -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(endpoint + path, method=method), timeout=600) as resp:
        body = resp.read()
    return json.loads(body) if body else {}


# -- one size ---------------------------------------------------------------------------------------
def write_yaml(root: Path, raw: str, out: str) -> Path:
    path = root / "datasets.yaml"
    path.write_text(
        f"""datasets:
  bench:
    type: VIDEOS
    input: s3://{raw}
    output: s3://{out}/lightly
    bypass_verify: true
    embedding: {{model: ViT-S-32, pretrained: none}}
    sensor:
      enabled: true
      files_per_run: 100
      max_runs_per_tick: 10
      max_objects_per_tick: 20000
      selection_config: {{n_samples: 10}}
"""
    )
    return path


def claim_everything(datasets: Path, instance: Any, n: int) -> None:
    """Every object registered as a one-video shard and added as a dynamic partition (one registry part)."""
    import polars as pl

    from datapool_pipeline.datapool import DatapoolStore
    from datapool_pipeline.datasets import load_datasets
    from datapool_pipeline.storage import open_storage
    from datapool_pipeline.workflow.discovery import shard_id

    spec = load_datasets(datasets)["bench"]
    listed = list(open_storage(spec.input).list())
    assert len(listed) == n
    rows = pl.DataFrame({
        "shard_id": [shard_id("VIDEOS", [(o.key, o.version)]) for o in listed],
        "raw_key": [o.key for o in listed],
        "raw_version": [o.version for o in listed],
        "raw_size": [o.size for o in listed],
        "media_type": ["VIDEOS"] * n,
    })
    store = DatapoolStore(open_storage(spec.output))
    store.check_owner(spec.name, spec.type, claim=True)
    store.append_registry(rows)
    instance.add_dynamic_partitions(PARTITIONS, rows["shard_id"].to_list())


def tick(defs: Any, instance: Any, cursor: str | None) -> tuple[float, Any]:
    import dagster as dg

    sensor = defs.resolve_sensor_def(SENSOR)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    start = time.perf_counter()
    result = sensor(context)
    return time.perf_counter() - start, result


def apply(instance: Any, result: Any) -> None:
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def requests_of(endpoint: str, raw: str, out: str) -> dict[str, Any]:
    body = call(endpoint, "/__counts", "GET")
    counts = body["counts"]
    inp, outp = counts.get(raw, {}), counts.get(out, {})
    reads = ("list", "get", "head")
    return {
        "input": inp,
        "output": outp,
        "list_read": sum(v for k, v in inp.items() if k.split("-")[0] in reads)
        + sum(v for k, v in outp.items() if k.split("-")[0] in reads),
        "writes": sum(v for k, v in {**{f"i{k}": v for k, v in inp.items()}, **outp}.items()
                      if k.lstrip("i").split("-")[0] not in reads),
        "server_seconds": round(body["server_seconds"], 4),
    }


def measure(n: int, repeats: int, endpoint: str) -> dict[str, Any]:
    import boto3
    import dagster as dg

    from datapool_pipeline.definitions import build_definitions
    from datapool_pipeline.storage import open_storage

    raw, out = f"raw-{n}", f"out-{n}"
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=raw)
    s3.create_bucket(Bucket=out)
    t = time.perf_counter()
    call(endpoint, f"/__fill?bucket={raw}&start=0&n={n}")
    setup = {"fill_seconds": round(time.perf_counter() - t, 2)}
    result: dict[str, Any] = {"objects": n, "new": NEW}
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test(temp_dir=tmp) as instance:
        datasets = write_yaml(Path(tmp), raw, out)
        t = time.perf_counter()
        claim_everything(datasets, instance, n)
        setup["claim_seconds"] = round(time.perf_counter() - t, 2)
        defs = build_definitions(str(datasets))

        # The first pass: tick after tick until the listing reaches the end of the bucket.
        cursor, first_pass = None, []
        while True:
            seconds, res = tick(defs, instance, cursor)
            assert not res.run_requests, "everything is claimed"
            first_pass.append(seconds)
            cursor = res.cursor
            if json.loads(cursor)["passes"] >= 1:
                break
        result["first_pass"] = {"ticks": len(first_pass), "max_tick_seconds": round(max(first_pass), 3)}

        ticks = []
        for r in range(repeats):
            call(endpoint, f"/__fill?bucket={raw}&start={n + r * NEW}&n={NEW}")
            call(endpoint, "/__reset")
            seconds, res = tick(defs, instance, cursor)
            counted = requests_of(endpoint, raw, out)
            files = sum(int(req.tags["datapool/files"]) for req in res.run_requests)
            assert files == NEW, f"expected {NEW} new files, got {files}"
            apply(instance, res)
            cursor = res.cursor
            ticks.append({"seconds": round(seconds, 4), **counted})
        result["tick_after_first"] = ticks
        result["tick_seconds_median"] = round(statistics.median(x["seconds"] for x in ticks), 4)
        result["tick_server_seconds_median"] = round(statistics.median(x["server_seconds"] for x in ticks), 4)
        # The first measured tick: the registry holds one part (the history). Every tick that registers
        # files adds a registry part, which every later tick reads (one GET more per repeat): the state
        # reads that grow with history are issue 12 item 2.
        result["list_read_requests"] = ticks[0]["list_read"]
        result["list_read_requests_per_repeat"] = [x["list_read"] for x in ticks]
        result["list_read_requests_for_new"] = -(-NEW // 1000)  # pages of 1,000 keys the new objects need
        result["list_read_requests_beyond_new"] = ticks[0]["list_read"] - result["list_read_requests_for_new"]

        # Baseline: the previous sensor listed from the first key and skipped up to its cursor.
        call(endpoint, "/__reset")
        storage = open_storage(f"s3://{raw}")
        assert storage.client is not None  # made before the clock starts, as the sensor's is
        t = time.perf_counter()
        listed = sum(1 for _ in storage.list())
        base = requests_of(endpoint, raw, out)
        result["baseline_listing_from_start"] = {
            "objects": listed, "seconds": round(time.perf_counter() - t, 3), "list_requests": base["list_read"],
            "server_seconds": base["server_seconds"],
        }
        # The irreducible part on moto: one StartAfter request at the end of the bucket (moto sorts every key
        # of the bucket per listing request; S3 does not).
        call(endpoint, "/__reset")
        t = time.perf_counter()
        s3.list_objects_v2(Bucket=raw, StartAfter=key_name(n + repeats * NEW))
        result["one_start_after_request_seconds"] = round(time.perf_counter() - t, 4)
    result["setup"] = setup
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 10^3 and 10^4, 2 repeats")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1000, 10_000] if args.quick else [1000, 100_000])
    repeats = args.repeats or (2 if args.quick else 3)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "DATAPOOL_S3_ROLE_ARN"):
        os.environ.pop(var, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    from benchmarks._common import cpu_model, write_result

    runs = []
    with moto_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        for n in sizes:
            runs.append(measure(n, repeats, endpoint))
            r = runs[-1]
            print(f"N={n}: tick {r['tick_seconds_median']:.3f}s (moto {r['tick_server_seconds_median']:.3f}s), "
                  f"{r['list_read_requests']} list/read requests ({r['list_read_requests_beyond_new']} beyond O(new)); "
                  f"baseline listing from the start: {r['baseline_listing_from_start']['list_requests']} requests, "
                  f"{r['baseline_listing_from_start']['seconds']:.2f}s", file=sys.stderr)
    small, large = runs[0], runs[-1]
    ratio = large["tick_seconds_median"] / small["tick_seconds_median"]
    client = [r["tick_seconds_median"] - r["tick_server_seconds_median"] for r in (small, large)]
    summary = {
        "tick_ratio_largest_vs_smallest": round(ratio, 2),
        "tick_ratio_without_moto_server_time": round(client[1] / client[0], 2),
        "max_list_read_requests_beyond_new": max(r["list_read_requests_beyond_new"] for r in runs),
        "targets": {"list_read_requests_beyond_new": "<= 5", "tick_ratio": "<= 2"},
    }
    print(json.dumps(summary, indent=2))
    write_result("sensor_resume", args.quick, {"cpu_model": cpu_model(), "sizes": sizes, "repeats": repeats,
                                                "runs": runs, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
