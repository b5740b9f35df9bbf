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
4. AVX2 emulation: steps 1-2 (torch runtimes) and 3 (runtime int8) again in a subprocess with ATEN_CPU_CAPABILITY=avx2,
   ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, FBGEMM_ENABLE_INSTRUCTIONS=AVX2 and `auto`'s
   candidate list for a CPU without AVX-512 flags. ONNX Runtime (MLAS) and OpenVINO pick their kernels from
   CPUID and ignore these variables: their numbers in the emulation are still AVX-512 ones (left out).
5. The int8 bound (both sections): the GEMMs of the model's own Linear layers (shapes recorded by hooks at
   batch 32), fp32 against dynamic int8 under each quantized engine (x86, fbgemm, onednn), interleaved;
   their time-weighted GOP/s give the int8 : fp32 ratio r, and with the FLOP split (share f of the FLOPs in
   Linear layers, the rest - patch convolution, attention matmuls, projection - stays fp32) the model's
   mixed FLOP bound 1 / (linear GFLOP / int8 peak + other GFLOP / fp32 peak), its Amdahl speed-up over
   fp32 1 / ((1 - f) + f / r), and the most the int8 model can gain over the naive fp32 model as measured.

    nice python benchmarks/bench_embedding.py --quick         # ~5 min on 2 cores: 96 frames, no torch.compile
    nice python benchmarks/bench_embedding.py                 # 320 frames, torch.compile, ViT-S-32 too
    nice python benchmarks/bench_embedding.py --avx2 --quick  # the AVX2 emulation (4., 5.) alone, ~12 min
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
from collections import Counter
from collections.abc import Callable, Iterator
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
ENGINES = ("x86", "fbgemm", "onednn")  # torch.backends.quantized.engine values for the int8 Linear on x86


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
    do 2x and 4x the fp32 multiply-adds per lane. int8 without VNNI (AVX2): vpmaddubsw multiplies 32 u8 x
    s8 pairs and adds neighbours to 16 s16, vpmaddwd adds those pairwise to 8 s32 (vpaddd accumulates); the
    first two share the 2 vector-multiply pipes, so 32 multiply-adds per cycle per core: 2x fp32's 16 FMAs."""
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


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Quantize under torch.backends.quantized.engine `name`: the packed weights it creates pick the kernels."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def linear_gemms(tower: torch.nn.Module, batch: int) -> Counter:
    """(M, K, N) -> calls per batch of every Linear the tower runs (the GEMMs int8 quantizes)."""
    counts: Counter = Counter()

    def hook(module: torch.nn.Linear, inputs: tuple, _output: object) -> None:
        counts[(inputs[0].numel() // module.in_features, module.in_features, module.out_features)] += 1

    handles = [m.register_forward_hook(hook) for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            tower(torch.zeros(batch, 3, 224, 224))
    finally:
        for h in handles:
            h.remove()
    return counts


def shape_peaks(gemms: Counter, rounds: int, clock: Callable[[], float] = time.perf_counter) -> dict:
    """fp32 and dynamic-int8 Linear (each quantized engine) on the model's own GEMM shapes, interleaved
    rounds, best time per shape; GOP/s per shape and time-weighted over the model (sum of its GEMM
    operations / sum of their best times)."""
    torch.manual_seed(0)
    calls: dict[tuple, dict[str, Callable]] = {}
    for m, k, n in gemms:
        linear = torch.nn.Sequential(torch.nn.Linear(k, n))
        x = torch.randn(m, k)
        calls[(m, k, n)] = {"fp32": lambda x=x, f=linear: f(x)}
        for engine in ENGINES:
            with quantized_engine(engine):
                q = runtimes.quantize_int8(linear)
            calls[(m, k, n)][f"int8_{engine}"] = lambda x=x, f=q: f(x)
    best: dict[str, dict[tuple, float]] = {}
    with torch.inference_mode():
        for fns in calls.values():
            for fn in fns.values():
                fn()
        for _ in range(rounds):
            for shape, fns in calls.items():
                for name, fn in fns.items():
                    start = clock()
                    fn()
                    seconds = clock() - start
                    best.setdefault(name, {})[shape] = min(best.get(name, {}).get(shape, float("inf")), seconds)
    total_ops = sum(2 * m * k * n * c for (m, k, n), c in gemms.items())
    out: dict = {"shapes": {f"{m}x{k}x{n}": {"calls": c} for (m, k, n), c in gemms.items()}, "model_gops": {}}
    for name, times in best.items():
        for (m, k, n), seconds in times.items():
            out["shapes"][f"{m}x{k}x{n}"][name] = 2 * m * k * n / seconds / 1e9
        out["model_gops"][name] = total_ops / sum(times[s] * c for s, c in gemms.items()) / 1e9
    return out


def int8_bound(flops: dict, gemms: Counter, batch: int, peaks: dict, results: dict, flags: frozenset[str]) -> dict:
    """How fast int8 can be here: the mixed FLOP bound (Linear GEMMs at the int8 peak of the model's shapes,
    the rest at the fp32 peak) and Amdahl's speed-up over fp32; compared with the measured frames/s."""
    gops = peaks["model_gops"]
    engine = max(ENGINES, key=lambda e: gops[f"int8_{e}"])
    fp32, int8 = gops["fp32"], gops[f"int8_{engine}"]
    linear = sum(2 * m * k * n * c for (m, k, n), c in gemms.items()) / batch / 1e9
    total = flops["ours_gflop_per_image"]
    share, ratio = linear / total, int8 / fp32
    bound = 1 / (linear / int8 + (total - linear) / fp32)
    theory = 4 if runtimes.int8_dot_product(flags) else 2
    int8_variant = max((k for k in results if k.startswith("int8")), key=lambda k: results[k]["frames_per_s"])
    naive, measured = results["naive_open_clip_fp32"]["frames_per_s"], results[int8_variant]["frames_per_s"]
    # Measured time outside the Linear GEMMs of our fp32 tower (LayerNorm, GELU, softmax, attention,
    # convolution), assumed unchanged by int8: the speed int8 reaches if only its GEMMs run faster.
    outside = max(0.0, 1 / results["fp32"]["frames_per_s"] - linear / fp32)
    parts = 1 / (outside + linear / int8)
    return {
        "linear_gflop_per_image": linear, "other_gflop_per_image": total - linear, "linear_flop_share": share,
        "fp32_gops_model_shapes": fp32, "int8_gops_model_shapes": int8, "int8_engine_fastest": engine,
        "int8_over_fp32_gemm": ratio, "int8_over_fp32_theoretical": theory,
        "flop_bound_frames_per_s": bound, "amdahl_speedup_over_fp32": 1 / ((1 - share) + share / ratio),
        "amdahl_speedup_over_fp32_theoretical": 1 / ((1 - share) + share / theory),
        "naive_fp32_fraction_of_fp32_bound": naive / (fp32 / flops["model_gflop_per_image"]),
        "max_ratio_vs_naive_at_flop_bound": bound / naive,
        "fp32_outside_linear_seconds_per_image": outside,
        "int8_if_only_gemms_sped_up_frames_per_s": parts, "ratio_vs_naive_if_only_gemms_sped_up": parts / naive,
        "int8_fastest_variant": int8_variant, "int8_measured_frames_per_s": measured,
        "int8_fraction_of_flop_bound": measured / bound,
        "int8_ratio_vs_naive": measured / naive,
    }


def print_bound(b: dict) -> None:
    total = b["linear_gflop_per_image"] + b["other_gflop_per_image"]
    print(f"  int8 bound: Linear GEMMs {b['linear_flop_share']:.1%} of {total:.2f} GFLOP/image; model-shape "
          f"GEMMs fp32 {b['fp32_gops_model_shapes']:.0f}, int8 ({b['int8_engine_fastest']}) "
          f"{b['int8_gops_model_shapes']:.0f} GOP/s = {b['int8_over_fp32_gemm']:.2f}x "
          f"(theory {b['int8_over_fp32_theoretical']}x); Amdahl over fp32 {b['amdahl_speedup_over_fp32']:.2f}x "
          f"(theory {b['amdahl_speedup_over_fp32_theoretical']:.2f}x); mixed FLOP bound "
          f"{b['flop_bound_frames_per_s']:.1f} frames/s = {b['max_ratio_vs_naive_at_flop_bound']:.2f}x naive "
          f"(naive at {b['naive_fp32_fraction_of_fp32_bound']:.0%} of the fp32 bound); only GEMMs faster: "
          f"{b['ratio_vs_naive_if_only_gemms_sped_up']:.2f}x; {b['int8_fastest_variant']} measured "
          f"{b['int8_ratio_vs_naive']:.2f}x "
          f"naive, {b['int8_fraction_of_flop_bound']:.0%} of its bound", flush=True)


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
    for engine in ENGINES[1:]:  # "int8" above is the default engine (x86)
        with quantized_engine(engine):
            variants[f"int8_{engine}"] = runtimes.build("int8", tower, 224)
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


def measure_model_only(variants: dict[str, Callable], batch: int, rounds: int,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, float]]:
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
                start = clock()
                out = encode(x)
                seconds = clock() - start
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
                 "int8": "int8_dynamic_linear", "int8_fbgemm": "int8_dynamic_linear",
                 "int8_onednn": "int8_dynamic_linear", "onnx-int8": "int8_dynamic_linear"}
    for name, entry in results.items():
        peak = peaks.get(precision.get(name, "fp32")) or peaks["fp32"]
        bound = peak / flops["model_gflop_per_image"]
        entry["flop_bound_frames_per_s"] = bound
        entry["fraction_of_flop_bound"] = entry["frames_per_s"] / bound


def per_core(variants: dict[str, Callable], gemms: Counter, flops: dict, rounds: int, flags: frozenset[str]) -> dict:
    """The bound analysis again on 1 thread timed by its CPU time (time.thread_time): what one core
    computes, whatever other processes do to the wall clock of a shared machine (its caches stay shared)."""
    names = ("naive_open_clip_fp32", "fp32", *(k for k in variants if k.startswith("int8")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shapes = shape_peaks(gemms, rounds, clock=time.thread_time)
        results = measure_model_only({k: variants[k] for k in names}, BATCH, rounds, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    base = results["naive_open_clip_fp32"]["frames_per_s"]
    for entry in results.values():
        entry["ratio_vs_naive_fp32"] = entry["frames_per_s"] / base
    bound = int8_bound(flops, gemms, BATCH, shapes, results, flags)
    print("  per core (1 thread, CPU time):", flush=True)
    print_bound(bound)
    return {"model_shape_gemms": shapes, "int8_bound": bound, "model_only": results}


def native_shape_peaks(rounds: int) -> dict:
    """shape_peaks of ViT-B-32's Linear GEMMs on 1 thread, CPU time (the --avx2 run's comparison)."""
    import open_clip

    tower = runtimes.prepare_cpu_tower(open_clip.create_model("ViT-B-32", pretrained=None).visual.eval())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return shape_peaks(linear_gemms(tower, BATCH), rounds, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)


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


def model_section(model_name: str, quick: bool, with_optional: bool, rounds: int, bf16: bool = True,
                  flags: frozenset[str] | None = None) -> dict:
    print(f"{model_name}: FLOPs, GEMM peaks", flush=True)
    flops = model_flops(model_name)
    peaks = gemm_peaks(bf16=bf16)
    print(f"  {flops}\n  {peaks}", flush=True)
    variants = model_variants(model_name, with_optional, with_compile=not quick, batch=BATCH, bf16=bf16)
    gemms = linear_gemms(variants["fp32"], BATCH)
    shapes = shape_peaks(gemms, rounds=3 if quick else 5)
    print(f"  model-shape GEMMs, GOP/s: {shapes['model_gops']}", flush=True)
    results = measure_model_only(variants, BATCH, rounds)
    bounds_and_fractions(results, flops, peaks)
    base = results["naive_open_clip_fp32"]["frames_per_s"]
    for entry in results.values():
        entry["ratio_vs_naive_fp32"] = entry["frames_per_s"] / base
    bound = int8_bound(flops, gemms, BATCH, shapes, results, runtimes.cpu_flags() if flags is None else flags)
    print_bound(bound)
    sweep_out = sweep(variants["int8"], [8, 16, 32, 64], [1, runtimes.cpu_threads()])
    print(f"  int8 sweep: {sweep_out}", flush=True)
    core = per_core(variants, gemms, flops, 2 if quick else 3, runtimes.cpu_flags() if flags is None else flags)
    return {"model": model_name, "flops": flops, "gemm_peaks_gflops": peaks, "model_shape_gemms": shapes,
            "int8_bound": bound, "model_only": results, "int8_batch_and_threads": sweep_out, "per_core": core}


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
    section = model_section("ViT-B-32", quick, with_optional=False, rounds=3 if quick else 5, bf16=False,
                            flags=flags)
    section["auto_candidates"] = runtimes.auto_candidates(flags)
    section["cpu_flags_emulated"] = sorted(f for f in flags if f.startswith(("avx", "fma", "f16c")))
    section["theoretical"] = theoretical_peaks(flags)
    section["env"] = AVX2_ENV
    section["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    # ffmpeg and PIL choose their own kernels (H.264 decoding and PIL have no AVX-512 code to lose); the
    # runtime is int8, what `auto` keeps among the torch runtimes here (fp32 is ~2x slower).
    limit = 96 if quick else 320
    with tempfile.TemporaryDirectory() as tmp:
        path = str(video_720p(Path(tmp) / "720p.mp4", seconds=limit / 30 + 1))
        print("end to end, 720p H.264, ViT-B-32, runtime int8", flush=True)
        section["end_to_end"] = end_to_end("ViT-B-32", path, limit, "int8")
    print(json.dumps(section, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child-avx2", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-emulation", action="store_true", help="skip the AVX2 emulation subprocess")
    parser.add_argument("--avx2", action="store_true", help="only the AVX2 emulation (results/embedding-avx2*.json)")
    args = parser.parse_args()
    if args.child_avx2:
        child_avx2(args.quick)
        return
    if args.avx2:
        print("AVX2 emulation (subprocess)", flush=True)
        emulated = emulated_avx2(args.quick)
        print("the same GEMMs with this CPU's own instructions (1 thread, CPU time)", flush=True)
        native = native_shape_peaks(2 if args.quick else 3)
        print(f"  {native['model_gops']}", flush=True)
        cpu_flags = sorted(f for f in runtimes.cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
        write_result("embedding-avx2", args.quick, {"batch_size": BATCH, "cpu_flags": cpu_flags,
                                                     "avx2_emulation": emulated,
                                                     "native_model_shape_gemms_per_core": native})
        if "end_to_end" in emulated:
            e2e = emulated["end_to_end"]
            print(f"AVX2 emulated, ViT-B-32 end to end: baseline {e2e['baseline_frames_per_s']:.1f} frames/s, "
                  f"int8 {e2e['ours_frames_per_s']:.1f} ({e2e['speedup_vs_baseline']:.2f}x), min cosine vs fp32 "
                  f"{e2e['min_cosine_vs_fp32']:.4f}", flush=True)
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
