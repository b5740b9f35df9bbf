"""Embedding throughput (frames/s: decode + preprocess + model) on a 720p H.264 video, side by side.

Baseline: the reference way of using open_clip: decode each frame at full resolution, make a PIL
image, apply the model's own preprocess transform, fp32 eager, batch 32.
Ours: datapool_pipeline's path: ffmpeg scales and centre-crops while decoding, tensor normalisation,
the fast CPU path (fused attention; fp32, or int8 with DATAPOOL_CPU_PRECISION=int8), decode in a
prefetch thread overlapped with inference. Every embedding is compared with the fp32 reference
(the unmodified model in fp32 on the same input): minimum cosine similarity.

    python benchmarks/bench_embedding.py --quick     # 96 frames, ViT-B-32 + ViT-S-32
    python benchmarks/bench_embedding.py             # 320 frames, also MobileCLIP-S1 and bf16 autocast
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import timed, write_result  # noqa: E402
from benchmarks._video import video_720p  # noqa: E402
from datapool_pipeline.datasets import EmbeddingSpec  # noqa: E402
from datapool_pipeline.embedding import model as emb  # noqa: E402
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable  # noqa: E402
from datapool_pipeline.media.video import FrameStream  # noqa: E402

BATCH = 32


def full_res_frames(path: str, limit: int):  # noqa: ANN201 - generator of uint8 HxWx3
    cmd = [ffmpeg_executable(), "-v", "error", "-i", path, "-frames:v", str(limit), "-f", "rawvideo",
           "-pix_fmt", "rgb24", "pipe:"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    size = 1280 * 720 * 3
    try:
        while len(buf := proc.stdout.read(size)) == size:  # type: ignore[union-attr]
            yield np.frombuffer(buf, np.uint8).reshape(720, 1280, 3)
    finally:
        proc.kill()
        proc.wait()


def baseline(model_name: str, path: str, limit: int) -> np.ndarray:
    """Reference usage: PIL image per frame + the model's preprocess, fp32 eager, batch 32."""
    import open_clip
    from PIL import Image

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()
    out, batch = [], []
    with torch.inference_mode():
        for frame in full_res_frames(path, limit):
            batch.append(preprocess(Image.fromarray(frame)))
            if len(batch) == BATCH:
                out.append(F.normalize(model.encode_image(torch.stack(batch)), dim=-1))
                batch = []
        if batch:
            out.append(F.normalize(model.encode_image(torch.stack(batch)), dim=-1))
    return torch.cat(out).numpy()


def ours(model_name: str, path: str, limit: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Our embeddings, and the frames they were computed from (for the fp32 reference)."""
    os.environ["DATAPOOL_CPU_PRECISION"] = precision
    emb._load_cached.cache_clear()
    model = emb.load_model(EmbeddingSpec(model=model_name, pretrained=None, batch_size=BATCH, device="cpu"))
    frames: list[np.ndarray] = []

    def limited():  # noqa: ANN202
        for i, frame in enumerate(FrameStream(path, model.image_size)):
            if i >= limit:
                return
            frames.append(frame)
            yield frame

    warm = np.zeros((2, model.image_size, model.image_size, 3), np.uint8)
    model.embed(warm)
    (vectors, seconds) = timed(lambda: np.concatenate(list(model.embed_stream(limited()))))
    return vectors, np.stack(frames), seconds  # type: ignore[return-value]


def fp32_reference(model_name: str, frames: np.ndarray) -> np.ndarray:
    """The unmodified open_clip model in fp32 on exactly the frames ours saw."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for s in range(0, len(frames), BATCH):
            x = torch.from_numpy(frames[s : s + BATCH]).permute(0, 3, 1, 2).float() / 255.0
            out.append(F.normalize(model.encode_image((x - mean) / std), dim=-1))
    return torch.cat(out).numpy()


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def run_model(model_name: str, path: str, limit: int, precisions: list[str], with_baseline: bool) -> dict:
    row: dict[str, object] = {"model": model_name, "frames": limit}
    if with_baseline:
        base, base_s = timed(lambda: baseline(model_name, path, limit))
        row["baseline"] = {"seconds": base_s, "frames_per_s": len(base) / base_s}
        print(f"{model_name} baseline: {len(base) / base_s:.2f} frames/s", flush=True)
    for precision in precisions:
        if with_baseline and precision != precisions[0]:
            # Machines here are shared: measure the baseline again between ours and keep its best run,
            # so that load changes during the benchmark never flatter our ratio.
            _, again_s = timed(lambda: baseline(model_name, path, limit))
            row["baseline"]["seconds_runs"] = [base_s, again_s]  # type: ignore[index]
            base_s = min(base_s, again_s)
            row["baseline"].update(seconds=base_s, frames_per_s=len(base) / base_s)  # type: ignore[union-attr]
            print(f"{model_name} baseline again: {len(base) / again_s:.2f} frames/s", flush=True)
            for earlier in precisions[: precisions.index(precision)]:
                entry = row[f"ours_{earlier}"]
                entry["speedup_vs_baseline"] = entry["frames_per_s"] / row["baseline"]["frames_per_s"]  # type: ignore[index]
        vectors, frames, seconds = ours(model_name, path, limit, precision)
        ref = fp32_reference(model_name, frames)
        entry = {"seconds": seconds, "frames_per_s": len(vectors) / seconds,
                 "min_cosine_vs_fp32": min_cos(vectors, ref)}
        if with_baseline:
            entry["speedup_vs_baseline"] = entry["frames_per_s"] / row["baseline"]["frames_per_s"]  # type: ignore[index]
            entry["min_cosine_vs_baseline_embeddings"] = min_cos(vectors, base)
        row[f"ours_{precision}"] = entry
        print(f"{model_name} ours {precision}: {entry['frames_per_s']:.2f} frames/s, min cos vs fp32 "
              f"{entry['min_cosine_vs_fp32']:.5f}" + (f", {entry.get('speedup_vs_baseline', 0):.2f}x" if with_baseline
                                                      else ""), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    limit = 96 if args.quick else 320
    with tempfile.TemporaryDirectory() as tmp:
        path = str(video_720p(Path(tmp) / "720p.mp4", seconds=limit / 30 + 1))
        rows = [run_model("ViT-B-32", path, limit, ["fp32", "int8"], with_baseline=True)]
        rows.append(run_model("ViT-S-32", path, limit, ["fp32", "int8"], with_baseline=False))
        if not args.quick:
            rows.append(run_model("MobileCLIP-S1", path, limit // 2, ["fp32"], with_baseline=False))
            rows.append(run_model("ViT-B-32", path, BATCH, ["bf16"], with_baseline=False))
    os.environ.pop("DATAPOOL_CPU_PRECISION", None)
    write_result("embedding", args.quick, {"batch_size": BATCH, "results": rows})


if __name__ == "__main__":
    main()
