"""Embedding throughput on this machine: every CPU runtime side by side, as a fraction of the FLOP bound.

Random seeded weights (open_clip, pretrained=None): no weights can be downloaded here, so cosines are
those of random weights; the runtimes check cosine on the real weights at load time (runtimes.calibrate).

1. Bounds: the model's FLOPs per image (torch.utils.flop_counter on the unmodified architecture's maths),
   the measured peak GEMM throughput per precision (2048^3 matmul on all threads: fp32, bf16, int8 via
   torch._int_mm and a dynamic-int8 Linear), and the theoretical peak cores x GHz x FLOPs/cycle of the ISA.
   FLOP bound (frames/s) = peak GEMM throughput of the runtime's precision / FLOPs per image.
2. Model only (ViT-B-32, batch 32, normalised tensors), interleaved rounds, best round per variant: naive
   open_clip fp32, our fp32 / int8 / bf16 autocast, ONNX Runtime fp32 / int8, OpenVINO (when installed),
   channels-last input, batch sizes and thread counts for int8; torch.compile in the full run only.
3. End to end on a 720p H.264 video (the target row): naive open_clip fp32 (full-res decode, PIL, the
   model's preprocess, batch 32) against load_model(runtime auto) with and without decode/inference
   overlap, interleaved (baseline, ours, ours without overlap, baseline again); cosine vs fp32.
4. AVX2 emulation: steps 1-2 (torch runtimes) again in a subprocess with ATEN_CPU_CAPABILITY=avx2,
   ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, FBGEMM_ENABLE_INSTRUCTIONS=AVX2 and `auto`'s
   candidate list for a CPU without AVX-512 flags. ONNX Runtime (MLAS) and OpenVINO pick their kernels from
   CPUID and ignore these variables: their numbers in the emulation are still AVX-512 ones (left out).

    nice python benchmarks/bench_embedding.py --quick     # ~5 min on 2 cores: 96 frames, no torch.compile
    nice python benchmarks/bench_embedding.py             # 320 frames, torch.compile, ViT-S-32 too
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
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
from datapool_pipeline.embedding import runtimes  # noqa: E402
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable  # noqa: E402
from datapool_pipeline.media.video import FrameStream  # noqa: E402

BATCH = 32
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
AVX512_FLAGS = ("avx512", "amx", "avx_vnni")


# ------------------------------------------------------------------------------------------------ bounds


def gemm_peaks(n: int = 2048, reps: int = 6, bf16: bool = True) -> dict[str, float]:
    """Measured GEMM throughput (GFLOP/s, GOP/s for int8) on all threads, best of 3 x reps."""
    def best(fn: Callable[[], object]) -> float:
        fn()
        fastest = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            fastest = min(fastest, (time.perf_counter() - start) / reps)
        return 2 * n**3 / fastest / 1e9

    out: dict[str, float] = {}
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if dtype == torch.bfloat16 and not bf16:
                continue  # emulated bf16 is a slow single-threaded fallback: minutes for nothing
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            out[name] = best(lambda a=a, b=b: a @ b)
        a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        with contextlib.suppress(RuntimeError):
            out["int8_int_mm"] = best(lambda: torch._int_mm(a8, b8))
        linear = runtimes.quantize_int8(torch.nn.Sequential(torch.nn.Linear(n, n)))
        x = torch.randn(n, n)
        out["int8_dynamic_linear"] = best(lambda: linear(x))
    return out


def clock_ghz() -> float:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("cpu MHz"))
        return float(line.split(":")[1]) / 1000
    return float("nan")


def theoretical_peaks(flags: frozenset[str]) -> dict[str, object]:
    """cores x GHz x FLOPs/cycle. FLOPs/cycle per core: two FMA pipes of the vector width (AMD family 25,
    Zen 3/4, runs 512-bit instructions on 256-bit pipes: counted as 256); bf16 and VNNI int8 dot products
    do 2x and 4x the fp32 multiply-adds per lane; int8 without VNNI (vpmaddubsw + vpmaddwd) 2x."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    amd_zen = "AuthenticAMD" in cpuinfo and "cpu family\t: 25" in cpuinfo
    width = 512 if "avx512f" in flags and not amd_zen else 256 if "avx2" in flags else 128
    fp32 = 2 * 2 * width // 32  # 2 pipes x lanes x (mul + add)
    per_cycle = {"fp32": fp32, "bf16": fp32 * 2 if runtimes.native_bf16(flags) else None,
                 "int8": fp32 * (4 if runtimes.int8_dot_product(flags) else 2)}
    cores, ghz = runtimes.cpu_threads(), clock_ghz()
    return {"cores": cores, "ghz_reported": ghz, "vector_bits_per_pipe": width, "flops_per_cycle_per_core": per_cycle,
            "peak_gflops": {k: (cores * ghz * v if v else None) for k, v in per_cycle.items()},
            "assumption": "2 vector FMA pipes per core at the /proc/cpuinfo clock (turbo can exceed it)"}


def model_flops(model_name: str) -> dict[str, float]:
    """GFLOP per image: the architecture's maths (attention fused, so every matmul is counted: the native
    MultiheadAttention kernel is invisible to FlopCounterMode) and what our CPU path runs (class-token-only
    last block)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from datapool_pipeline.embedding.fast_cpu import fuse_attention

    torch.manual_seed(0)
    visual = open_clip.create_model(model_name, pretrained=None).visual.eval()
    x = torch.zeros(1, 3, 224, 224)
    out = {}
    with torch.inference_mode():
        fuse_attention(visual)
        with FlopCounterMode(display=False) as counter:
            visual(x)
        out["model_gflop_per_image"] = counter.get_total_flops() / 1e9
        fast = runtimes.prepare_cpu_tower(visual)
        with FlopCounterMode(display=False) as counter:
            fast(x)
        out["ours_gflop_per_image"] = counter.get_total_flops() / 1e9
    return out


# -------------------------------------------------------------------------------------------- model only


def model_variants(model_name: str, with_optional: bool, with_compile: bool, batch: int,
                   bf16: bool = True) -> dict[str, Callable]:
    """name -> encoder of a normalised NCHW batch; built once (build seconds printed)."""
    import open_clip

    torch.manual_seed(0)
    naive = open_clip.create_model(model_name, pretrained=None).eval()
    torch.manual_seed(0)
    tower = runtimes.prepare_cpu_tower(open_clip.create_model(model_name, pretrained=None).visual.eval())
    variants: dict[str, Callable] = {"naive_open_clip_fp32": naive.encode_image, "fp32": tower}
    names = ["int8", *(["bf16"] if bf16 else []), *(["onnx", "onnx-int8", "openvino"] if with_optional else [])]
    for name in names:
        if runtimes.missing_extra(name):
            print(f"  {name}: not installed", flush=True)
            continue
        start = time.perf_counter()
        variants[name] = runtimes.build(name, tower, 224)
        print(f"  built {name} in {time.perf_counter() - start:.1f}s", flush=True)
    variants["fp32_channels_last"] = lambda x: tower(x.contiguous(memory_format=torch.channels_last))
    if with_compile:
        import torch._inductor.config as inductor

        inductor.freezing = True
        for name, base in (("compile_fp32", tower), ("compile_bf16", None)):
            torch._dynamo.reset()
            compiled = torch.compile(tower)
            encode = compiled if base is not None else (lambda x, c=compiled: runtimes._bf16_autocast(c, x))
            start = time.perf_counter()
            with torch.inference_mode():
                encode(torch.zeros(batch, 3, 224, 224))
            print(f"  compiled {name} in {time.perf_counter() - start:.1f}s", flush=True)
            variants[name] = encode
    return variants


def measure_model_only(variants: dict[str, Callable], batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds over the variants on one batch of calibration frames; best round each."""
    x = torch.from_numpy(runtimes.calibration_frames(batch, 224)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.45) / 0.27
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        reference = F.normalize(variants["naive_open_clip_fp32"](x).float(), dim=-1)
        for encode in variants.values():
            encode(x[:2])  # warm-up
        for r in range(rounds):
            for name, encode in variants.items():
                start = time.perf_counter()
                out = encode(x)
                seconds = time.perf_counter() - start
                entry = results.setdefault(name, {"frames_per_s": 0.0, "rounds": []})
                entry["rounds"].append(batch / seconds)
                entry["frames_per_s"] = max(entry["frames_per_s"], batch / seconds)
                if r == 0:
                    entry["min_cosine_vs_fp32"] = float(F.cosine_similarity(out.float(), reference).min())
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v['rounds'][-1]:.1f}" for k, v in results.items()),
                  flush=True)
    return results


def sweep(tower_encoder: Callable, batches: list[int], threads: list[int]) -> dict[str, float]:
    """int8 frames/s by batch size (all threads) and by thread count (batch 32); best of 2."""
    out: dict[str, float] = {}
    cores = torch.get_num_threads()
    frames = runtimes.calibration_frames(max(batches), 224)
    x_all = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 - 0.45) / 0.27
    with torch.inference_mode():
        for t in threads:
            torch.set_num_threads(t)
            for b in batches if t == cores else [BATCH]:
                x = x_all[:b]
                tower_encoder(x[:2])
                best = min(timed(lambda x=x: tower_encoder(x))[1] for _ in range(2))
                out[f"batch{b}_threads{t}"] = b / best
    torch.set_num_threads(cores)
    return out


def bounds_and_fractions(results: dict, flops: dict, peaks: dict) -> None:
    precision = {"naive_open_clip_fp32": "fp32", "fp32": "fp32", "fp32_channels_last": "fp32", "onnx": "fp32",
                 "compile_fp32": "fp32", "bf16": "bf16", "compile_bf16": "bf16",
                 "openvino": "bf16" if runtimes.native_bf16() else "fp32",
                 "int8": "int8_dynamic_linear", "onnx-int8": "int8_dynamic_linear"}
    for name, entry in results.items():
        peak = peaks.get(precision.get(name, "fp32")) or peaks["fp32"]
        bound = peak / flops["model_gflop_per_image"]
        entry["flop_bound_frames_per_s"] = bound
        entry["fraction_of_flop_bound"] = entry["frames_per_s"] / bound


# -------------------------------------------------------------------------------------------- end to end


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


def baseline(naive: torch.nn.Module, preprocess: Callable, path: str, limit: int) -> np.ndarray:
    """Reference usage: PIL image per frame + the model's preprocess, fp32 eager, batch 32."""
    from PIL import Image

    out, batch = [], []
    with torch.inference_mode():
        for frame in full_res_frames(path, limit):
            batch.append(preprocess(Image.fromarray(frame)))
            if len(batch) == BATCH:
                out.append(F.normalize(naive.encode_image(torch.stack(batch)), dim=-1))
                batch = []
        if batch:
            out.append(F.normalize(naive.encode_image(torch.stack(batch)), dim=-1))
    return torch.cat(out).numpy()


def ours(model: emb.EmbeddingModel, path: str, limit: int, prefetch: bool) -> tuple[np.ndarray, np.ndarray]:
    frames: list[np.ndarray] = []

    def limited():  # noqa: ANN202
        for i, frame in enumerate(FrameStream(path, model.image_size)):
            if i >= limit:
                return
            frames.append(frame)
            yield frame

    vectors = np.concatenate(list(model.embed_stream(limited(), prefetch=prefetch)))
    return vectors, np.stack(frames)


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def end_to_end(model_name: str, path: str, limit: int, runtime: str) -> dict:
    import open_clip

    torch.manual_seed(0)
    naive, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    naive.eval()
    emb._load_cached.cache_clear()
    (model, load_s) = timed(lambda: emb.load_model(EmbeddingSpec(model=model_name, pretrained=None,
                                                                 batch_size=BATCH, device="cpu", runtime=runtime)))
    print(f"  load_model(runtime={runtime}) {load_s:.1f}s: {model.runtime_note}", flush=True)
    row: dict = {"runtime_requested": runtime, "runtime": model.runtime, "runtime_note": model.runtime_note,
                 "load_and_calibration_seconds": load_s, "baseline_runs": [], "ours_runs": [],
                 "ours_no_overlap_runs": []}
    base = vectors = frames = None
    for _ in range(2):  # interleaved: baseline, ours, ours without overlap; twice
        base, s = timed(lambda: baseline(naive, preprocess, path, limit))
        row["baseline_runs"].append(len(base) / s)
        (vectors, frames), s = timed(lambda: ours(model, path, limit, prefetch=True))
        row["ours_runs"].append(len(vectors) / s)
        _, s = timed(lambda: ours(model, path, limit, prefetch=False))
        row["ours_no_overlap_runs"].append(len(vectors) / s)
        print(f"  baseline {row['baseline_runs'][-1]:.1f}, ours {row['ours_runs'][-1]:.1f}, ours without overlap "
              f"{row['ours_no_overlap_runs'][-1]:.1f} frames/s", flush=True)
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        ref = F.normalize(naive.encode_image((x - model.mean) / model.std), dim=-1).numpy()
    for key in ("baseline", "ours", "ours_no_overlap"):
        row[f"{key}_frames_per_s"] = max(row[f"{key}_runs"])
    row["speedup_vs_baseline"] = row["ours_frames_per_s"] / row["baseline_frames_per_s"]
    row["overlap_gain"] = row["ours_frames_per_s"] / row["ours_no_overlap_frames_per_s"]
    row["min_cosine_vs_fp32"] = min_cos(vectors, ref)
    row["min_cosine_vs_baseline_embeddings"] = min_cos(vectors, base)
    emb._load_cached.cache_clear()
    return row


# ------------------------------------------------------------------------------------------------- main


def model_section(model_name: str, quick: bool, with_optional: bool, rounds: int, bf16: bool = True) -> dict:
    print(f"{model_name}: FLOPs, GEMM peaks", flush=True)
    flops = model_flops(model_name)
    peaks = gemm_peaks(bf16=bf16)
    print(f"  {flops}\n  {peaks}", flush=True)
    variants = model_variants(model_name, with_optional, with_compile=not quick, batch=BATCH, bf16=bf16)
    results = measure_model_only(variants, BATCH, rounds)
    bounds_and_fractions(results, flops, peaks)
    base = results["naive_open_clip_fp32"]["frames_per_s"]
    for entry in results.values():
        entry["ratio_vs_naive_fp32"] = entry["frames_per_s"] / base
    sweep_out = sweep(variants["int8"], [8, 16, 32, 64], [1, runtimes.cpu_threads()])
    print(f"  int8 sweep: {sweep_out}", flush=True)
    return {"model": model_name, "flops": flops, "gemm_peaks_gflops": peaks, "model_only": results,
            "int8_batch_and_threads": sweep_out}


def emulated_avx2(quick: bool) -> dict:
    env = {**os.environ, **AVX2_ENV, "BENCH_EMBEDDING_CHILD": "1"}
    cmd = [sys.executable, __file__, "--child-avx2", *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    print("\n".join("  [avx2] " + ln for ln in lines if not ln.startswith("{")), flush=True)
    if out.returncode:
        print(out.stderr[-2000:], flush=True)
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(next(ln for ln in reversed(lines) if ln.startswith("{")))


def child_avx2(quick: bool) -> None:
    flags = frozenset(f for f in runtimes.cpu_flags() if not f.startswith(AVX512_FLAGS))
    # bf16 is left out: without AVX512_BF16 it is emulated (~10x slower than fp32) and never a candidate.
    section = model_section("ViT-B-32", quick, with_optional=False, rounds=2 if quick else 3, bf16=False)
    section["auto_candidates"] = runtimes.auto_candidates(flags)
    section["theoretical"] = theoretical_peaks(flags)
    section["env"] = AVX2_ENV
    section["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(json.dumps(section, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child-avx2", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-emulation", action="store_true", help="skip the AVX2 emulation subprocess")
    args = parser.parse_args()
    if args.child_avx2:
        child_avx2(args.quick)
        return
    limit = 96 if args.quick else 320
    flags = runtimes.cpu_flags()
    payload: dict = {"batch_size": BATCH, "weights": "random, seeded (open_clip pretrained=None)",
                     "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
                     "theoretical": theoretical_peaks(flags), "auto_candidates": runtimes.auto_candidates(flags)}
    payload["vit_b_32"] = model_section("ViT-B-32", args.quick, with_optional=True, rounds=3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(video_720p(Path(tmp) / "720p.mp4", seconds=limit / 30 + 1))
        print("end to end, 720p H.264, ViT-B-32", flush=True)
        payload["end_to_end"] = end_to_end("ViT-B-32", path, limit, "auto")
        if not args.quick:
            payload["end_to_end_vit_s_32"] = end_to_end("ViT-S-32", path, limit, "auto")
    if not args.no_emulation:
        print("AVX2 emulation (subprocess)", flush=True)
        payload["avx2_emulation"] = emulated_avx2(args.quick)
    e2e = payload["end_to_end"]
    print(f"ViT-B-32 end to end: baseline {e2e['baseline_frames_per_s']:.1f} frames/s, ours ({e2e['runtime']}) "
          f"{e2e['ours_frames_per_s']:.1f} ({e2e['speedup_vs_baseline']:.2f}x), min cosine vs fp32 "
          f"{e2e['min_cosine_vs_fp32']:.4f}", flush=True)
    write_result("embedding", args.quick, payload)


if __name__ == "__main__":
    main()
