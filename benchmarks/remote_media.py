"""Remote videos for ffmpeg: range-read through the loopback proxy ("stream") vs a temporary download
("download"), and, for reference, ffmpeg reading an S3 presigned URL directly.

    python benchmarks/remote_media.py [--seconds 60] [--out benchmarks/results/remote_media.json]

Generates a 720p H.264 video (ffmpeg testsrc2), uploads it to moto S3 and Azurite on 127.0.0.1 (Azurite
only if `npm install` has been run), and times, per backend and mode: the full decode that the frames /
embeddings steps do (every frame, scaled to 224), a seek-only job (5 selected frames as PNG), and the time
to the first decoded frame. Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable  # noqa: E402
from datapool_pipeline.media.video import FrameStream, extract_frames_png  # noqa: E402
from datapool_pipeline.storage import open_storage  # noqa: E402


def make_video(path: Path, seconds: int) -> None:
    subprocess.run(
        [ffmpeg_executable(), "-y", "-v", "error", "-f", "lavfi",
         "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def time_source(source: str, frames_total: int) -> dict[str, float]:
    t0 = time.perf_counter()
    stream = FrameStream(source, size=224)
    first = None
    count = 0
    for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
        count += 1
    decode = time.perf_counter() - t0
    assert count == frames_total and stream.error is None, (count, stream.error)
    t1 = time.perf_counter()
    picks = [0, frames_total // 4, frames_total // 2, 3 * frames_total // 4, frames_total - 1]
    pngs = extract_frames_png(source, picks)
    assert len(pngs) == 5
    return {"first_frame_s": round(first or 0.0, 3), "decode_all_s": round(decode, 3),
            "extract_5_png_s": round(time.perf_counter() - t1, 3)}


def run_backend(name: str, uri: str, video: Path, frames_total: int, results: dict) -> None:
    storage = open_storage(uri)
    storage.write_bytes("big.mp4", video.read_bytes())
    for mode in ("stream", "download"):
        os.environ["DATAPOOL_REMOTE_MEDIA"] = mode
        t0 = time.perf_counter()
        with storage.local_source("big.mp4") as source:
            ready = time.perf_counter() - t0
            timing = time_source(source, frames_total)
        timing["source_ready_s"] = round(ready, 3)
        timing["total_s"] = round(time.perf_counter() - t0, 3)
        results[f"{name}/{mode}"] = timing
        print(f"{name:6s} {mode:9s} {timing}", flush=True)
    if name == "s3":
        url = storage.client.generate_presigned_url(  # type: ignore[attr-defined]
            "get_object", Params={"Bucket": storage.bucket, "Key": storage._name("big.mp4")}, ExpiresIn=900  # type: ignore[attr-defined]
        )
        t0 = time.perf_counter()
        timing = time_source(url, frames_total)
        timing["total_s"] = round(time.perf_counter() - t0, 3)
        results["s3/presigned-url"] = timing
        print(f"{name:6s} presigned {timing}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "remote_media.json"))
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "big.mp4"
        make_video(video, args.seconds)
        frames_total = args.seconds * 30
        results: dict = {"video": {"seconds": args.seconds, "size": "1280x720", "fps": 30,
                                   "bytes": video.stat().st_size},
                         "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
        print(f"video: {results['video']}", flush=True)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            host, port = moto.get_host_and_port()
            os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            import boto3

            boto3.client("s3").create_bucket(Bucket=bucket)
            run_backend("s3", f"s3://{bucket}/media", video, frames_total, results)
        finally:
            moto.stop()
        azurite = REPO / "node_modules" / ".bin" / "azurite-blob"
        if azurite.exists():
            run_azure(azurite, Path(tmp), video, frames_total, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


def run_azure(binary: Path, tmp: Path, video: Path, frames_total: int, results: dict) -> None:
    import socket

    from azure.storage.blob import BlobServiceClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                             str(tmp / "azurite"), "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/devstoreaccount1"
        key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
        os.environ.update(AZURE_STORAGE_ACCOUNT_URL=url, AZURE_STORAGE_KEY=key)
        BlobServiceClient(url, credential={"account_name": "devstoreaccount1", "account_key": key}).create_container(
            "bench"
        )
        run_backend("azure", "az://bench/media", video, frames_total, results)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
