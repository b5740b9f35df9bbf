"""CPU runtimes for an open_clip image tower, and the choice among them at run start.

`embedding.runtime` (datasets.yaml; `$DATAPOOL_EMBEDDING_RUNTIME` overrides it for every dataset):

  fp32       torch eager, fused attention: numerically the fp32 model (the reference)
  int8       torch eager, every Linear dynamically quantized to int8 (fbgemm on x86, qnnpack on ARM)
  bf16       torch eager under bf16 autocast; only fast with native bf16 (AVX512_BF16, AMX, ARM BF16):
             elsewhere about 10x slower than fp32, so `auto` considers it only on such CPUs
  onnx       ONNX Runtime fp32 (optional extra `[onnx]`)
  onnx-int8  ONNX Runtime, MatMuls dynamically quantized to int8 (extra `[onnx]`)
  openvino   OpenVINO at its default precision for the CPU: bf16 where native, else f32 (extra `[openvino]`)
  auto       (default) the fastest of the candidates this CPU and installation offer whose embeddings keep a
             cosine >= MIN_COSINE to fp32, measured at load time on the real weights (calibrate()).

Every runtime is numerically checked against fp32 at load time (auto: all candidates; an explicit one: on
a few frames) and refused below MIN_COSINE. That is why the runtime is not part of the embedding
fingerprint (the cache key): whatever runs, the embeddings stay in the fp32 model's space within that
tolerance, and an automatic choice that differs between machines (or between the pods of one run) never
splits a dataset's cache. torch.compile is not a runtime here: it compiled for 45-90 s on 2 cores before
the first batch (benchmarks/bench_embedding.py measures it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datapool_pipeline.embedding.fast_cpu import optimize_visual_for_cpu, quantize_int8
from datapool_pipeline.errors import ConfigError

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""A normalised float32 NCHW batch -> features (any float dtype; normalised by the caller)."""

RUNTIME_ENV = "DATAPOOL_EMBEDDING_RUNTIME"
LEGACY_RUNTIME_ENV = "DATAPOOL_CPU_PRECISION"  # the former name, still read
RUNTIMES = ("auto", "fp32", "int8", "bf16", "onnx", "onnx-int8", "openvino")
MIN_COSINE = 0.99
"""The smallest cosine to the fp32 embedding of the same frame that a runtime may give (issue 12)."""

# Optional runtimes: (python modules that must import, the pip extra that installs them).
_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnxruntime", "onnx"), "onnx"),
    "onnx-int8": (("onnxruntime", "onnx"), "onnx"),
    "openvino": (("openvino",), "openvino"),
}
_CALIBRATION_BATCH = 32  # at most: the run's batch size, or fewer frames when fp32 would take too long
_CALIBRATION_SECONDS = 4.0  # the fp32 pass of a calibration at most (estimated from 2 frames)
_MIN_CALIBRATION_BATCH = 8  # below this, batch efficiency differs too much between runtimes to compare them
_CHECK_FRAMES = 4  # frames an explicit runtime is checked on against fp32
_CLEARLY_FASTER = 1.1  # auto prefers an earlier candidate unless a later one is this much faster


def requested_runtime(configured: str = "auto") -> str:
    """$DATAPOOL_EMBEDDING_RUNTIME (or its former name $DATAPOOL_CPU_PRECISION) when set, else the dataset's
    `embedding.runtime`."""
    for env in (RUNTIME_ENV, LEGACY_RUNTIME_ENV):
        value = os.environ.get(env, "").strip().lower()
        if value:
            if value not in RUNTIMES:
                raise ConfigError(f"{env} must be one of {', '.join(RUNTIMES)}, got {value!r}")
            return value
    return configured


def missing_extra(name: str) -> str | None:
    """None when runtime `name` can run here, else a one-line reason naming the extra to install."""
    if name not in _EXTRAS:
        return None
    modules, extra = _EXTRAS[name]
    absent = [m for m in modules if not _importable(m)]
    if not absent:
        return None
    return (f"embedding.runtime {name} needs {' and '.join(absent)}: pip install 'datapool_pipeline[{extra}]' "
            "(or use runtime auto, fp32 or int8)")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(name: str) -> None:
    reason = missing_extra(name)
    if reason:
        raise ConfigError(reason)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo `flags`, or `Features` on ARM); empty when unknown."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """bf16 matrix instructions (x86 AVX512_BF16 / AMX-BF16, ARM BF16): without them bf16 is emulated."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def int8_dot_product(flags: Iterable[str] | None = None) -> bool:
    """int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8, ARM dotprod/i8mm)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def auto_candidates(flags: Iterable[str] | None = None) -> list[str]:
    """What `auto` calibrates on this CPU: the torch runtimes (bf16 only with native bf16), then the
    optional runtimes that are installed. int8 comes first: the fastest wherever it was measured."""
    names = ["int8", "fp32"]
    if native_bf16(flags):
        names.append("bf16")
    names += [n for n in ("onnx-int8", "onnx", "openvino") if missing_extra(n) is None]
    return names


# ---------------------------------------------------------------------------------------------- builders


def cpu_threads() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's CPU
    limit; more threads than the quota stall each other at every synchronisation)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(-(-int(quota) // int(period)))))
    return cores


def build(name: str, fp32_visual: nn.Module, image_size: int) -> Encoder:
    """The encoder of runtime `name` for a tower already prepared by optimize_visual_for_cpu(.., "fp32")
    (fp32 and bf16 share its weights; int8 and the exported runtimes hold their own copy)."""
    require(name)
    if name == "fp32":
        return fp32_visual
    if name == "int8":
        return quantize_int8(fp32_visual)
    if name == "bf16":
        return functools.partial(_bf16_autocast, fp32_visual)
    if name in ("onnx", "onnx-int8"):
        return _onnxruntime_encoder(_onnx_file(fp32_visual, image_size, quantized=name == "onnx-int8"))
    if name == "openvino":
        return _openvino_encoder(_onnx_file(fp32_visual, image_size, quantized=False))
    raise ConfigError(f"embedding.runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")


def _bf16_autocast(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return visual(x)


def cache_dir() -> Path:
    """Where exported models are kept between runs: $DATAPOOL_CACHE_DIR, else ~/.cache/datapool_pipeline."""
    base = os.environ.get("DATAPOOL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "datapool_pipeline"
    )
    return Path(base)


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{type(module).__name__}|{torch.__version__}|export-v1".encode())
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _onnx_file(visual: nn.Module, image_size: int, quantized: bool) -> Path:
    """The tower exported to ONNX (and dynamically quantized to int8 when asked), cached on local disk by
    a digest of its weights: the export (~5-10 s for ViT-B-32 on 2 cores) is paid once per machine."""
    import onnxruntime

    folder = cache_dir() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    digest = _weights_digest(visual)
    fp32_path = folder / f"{digest}.onnx"
    if not fp32_path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / "model.onnx"
            example = torch.zeros(2, 3, image_size, image_size)
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(visual, (example,), str(out), input_names=["pixels"], output_names=["features"],
                                  dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            os.replace(out, fp32_path)
    if not quantized:
        return fp32_path
    int8_path = folder / f"{digest}-int8-ort{onnxruntime.__version__}.onnx"
    if not int8_path.exists():
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / "model-int8.onnx"
            level = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)  # its advice to run pre-processing first
            try:
                quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8)
            finally:
                logging.getLogger().setLevel(level)
            os.replace(out, int8_path)
    return int8_path


def _onnxruntime_encoder(path: Path) -> Encoder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"pixels": x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return encode


def _openvino_encoder(path: Path) -> Encoder:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_NUM_THREADS": cpu_threads(), "PERFORMANCE_HINT": "LATENCY"})

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = compiled(x.detach().contiguous().numpy())[0]
        return torch.from_numpy(np.asarray(out))

    return encode


# ------------------------------------------------------------------------------------------ calibration


def calibration_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n deterministic image-like uint8 frames (n, size, size, 3): smooth colour fields at two scales with
    hard edges and pixel noise. Used when no real frame is at hand yet (the model is loaded before the
    first frame is decoded)."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)
    medium = F.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=(size, size), mode="nearest")
    noise = torch.rand(n, 3, size, size, generator=g)
    img = (0.6 * coarse + 0.3 * medium + 0.1 * noise).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@dataclass
class Trial:
    runtime: str
    frames_per_s: float = 0.0
    min_cosine: float = float("nan")
    build_seconds: float = 0.0
    error: str | None = None


@dataclass
class Choice:
    runtime: str
    encode: Encoder = field(repr=False)
    requested: str
    frames: int
    seconds: float
    trials: list[Trial]
    cached: bool = False
    """auto's choice came from this machine's calibration cache (choose()), checked on a few frames."""

    @property
    def chosen(self) -> Trial:
        return next(t for t in self.trials if t.runtime == self.runtime)

    def describe(self) -> str:
        """One line for the run's log and the embeddings asset's metadata."""
        chosen = self.chosen
        how = "auto, cached calibration" if self.cached else "auto" if self.requested == "auto" else "set"
        head = (f"{self.runtime} ({how}; {chosen.frames_per_s:.1f} "
                f"frames/s in calibration, min cosine to fp32 {chosen.min_cosine:.4f}")
        others = [t for t in self.trials if t.runtime != self.runtime]
        if others:
            head += "; also measured: " + ", ".join(
                f"{t.runtime} {t.error}" if t.error else f"{t.runtime} {t.frames_per_s:.1f} (cos {t.min_cosine:.4f})"
                for t in others)
        return head + f"; {self.frames} frames x {cpu_threads()} threads, {self.seconds:.1f} s)"


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def _timed(encode: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    with torch.inference_mode():
        start = time.perf_counter()
        out = encode(x)
        return out, time.perf_counter() - start


def calibrate(
    fp32_visual: nn.Module, image_size: int, normalise: Callable[[np.ndarray], torch.Tensor], requested: str,
    batch_size: int, candidates: list[str] | None = None,
) -> Choice:
    """Build the requested runtime (or, for `auto`, every candidate), time one batch of calibration frames
    on each and compare its embeddings with fp32's; return the fastest that keeps MIN_COSINE.

    The batch is the run's batch size (at most 32), smaller (not under 8) when the fp32 pass would take
    over ~4 s (large models, loaded machines), so the whole calibration takes a few seconds. An explicit
    runtime is checked against fp32 on a few frames only and refused (ConfigError) below MIN_COSINE; a
    candidate of `auto` that fails to build or falls below it is skipped and reported."""
    start = time.perf_counter()
    if requested != "auto":
        require(requested)
    names = (candidates or auto_candidates()) if requested == "auto" else [requested]
    if requested == "auto":
        with torch.inference_mode():
            probe = normalise(calibration_frames(2, image_size, seed=1))
            fp32_visual(probe[:1])  # first call: allocations, kernel selection
            _, seconds = _timed(fp32_visual, probe)
        per_frame = seconds / len(probe)
        n = min(batch_size, _CALIBRATION_BATCH, max(_MIN_CALIBRATION_BATCH, int(_CALIBRATION_SECONDS / per_frame)))
    else:  # an explicit (or cached) runtime is only checked, on a few frames
        n = _CHECK_FRAMES
    x = normalise(calibration_frames(n, image_size))
    if requested in ("auto", "fp32"):
        reference, seconds = _timed(fp32_visual, x)
        fp32_trial = Trial("fp32", n / seconds, 1.0)
    else:
        reference, _ = _timed(fp32_visual, x[:_CHECK_FRAMES])
        fp32_trial = None
    trials: list[Trial] = []
    encoders: dict[str, Encoder] = {}
    for name in names:
        if name == "fp32":
            assert fp32_trial is not None
            trials.append(fp32_trial)
            encoders[name] = fp32_visual
            continue
        trial = Trial(name)
        trials.append(trial)
        try:
            built = time.perf_counter()
            encode = build(name, fp32_visual, image_size)
            with torch.inference_mode():
                encode(x[:2])  # warm-up: quantized weight packing, oneDNN primitives, ORT/OV first run
            trial.build_seconds = time.perf_counter() - built
            out, seconds = _timed(encode, x)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - an optional runtime that cannot run this model is skipped
            if requested != "auto":
                raise ConfigError(f"embedding.runtime {name} could not run {type(fp32_visual).__name__}: "
                                  f"{type(exc).__name__}: {exc}") from None
            trial.error = f"failed ({type(exc).__name__})"
            continue
        trial.frames_per_s = n / seconds
        trial.min_cosine = _min_cosine(out[: len(reference)], reference)
        encoders[name] = encode
    if requested != "auto":
        trial = trials[0]
        if trial.min_cosine < MIN_COSINE:
            raise ConfigError(
                f"embedding.runtime {requested}: its embeddings reach only cosine {trial.min_cosine:.4f} to fp32 "
                f"with these weights (at least {MIN_COSINE} is required to share the fp32 embedding cache); "
                "use runtime auto or fp32")
        return Choice(requested, encoders[requested], requested, n, time.perf_counter() - start, trials)
    good = [t for t in trials if t.error is None and t.min_cosine >= MIN_COSINE]
    # Shared machines are noisy: a second interleaved pass over the contenders (within 2x of the fastest),
    # best pass each; then the first in candidate order (int8, the torch runtimes before the optional ones)
    # unless another is clearly faster.
    fastest = max(t.frames_per_s for t in good)
    for t in [t for t in good if t.frames_per_s > fastest / 2]:
        _, seconds = _timed(encoders[t.runtime], x)
        t.frames_per_s = max(t.frames_per_s, n / seconds)
    fastest = max(t.frames_per_s for t in good)
    best = next(t for t in good if t.frames_per_s >= fastest / _CLEARLY_FASTER)
    return Choice(best.runtime, encoders[best.runtime], requested, n, time.perf_counter() - start, trials)


def choose(
    fp32_visual: nn.Module, image_size: int, normalise: Callable[[np.ndarray], torch.Tensor], requested: str,
    batch_size: int, model_key: str,
) -> Choice:
    """calibrate(), with `auto`'s choice cached per machine in cache_dir()/calibration: a later load of the
    same model (`model_key`: its fingerprint) with the same batch, CPU, threads, torch and installed runtimes
    builds the chosen runtime only and checks it against fp32 on a few frames, as for an explicit runtime
    (seconds instead of a full calibration per run and per process). Delete the folder to measure again."""
    if requested != "auto":
        return calibrate(fp32_visual, image_size, normalise, requested, batch_size)
    candidates = auto_candidates()
    key = hashlib.blake2b(repr((
        model_key, image_size, min(batch_size, _CALIBRATION_BATCH), sorted(cpu_flags()), cpu_threads(),
        torch.__version__, candidates, "calibration-v1",
    )).encode(), digest_size=12).hexdigest()
    path = cache_dir() / "calibration" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = str(json.loads(path.read_text())["runtime"])
        if cached in candidates:
            with contextlib.suppress(ConfigError):  # no longer close enough to fp32: calibrate again
                choice = calibrate(fp32_visual, image_size, normalise, cached, batch_size)
                choice.requested, choice.cached = "auto", True
                return choice
    choice = calibrate(fp32_visual, image_size, normalise, "auto", batch_size, candidates)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a calibration
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"runtime": choice.runtime, "model": model_key, "note": choice.describe()}))
        tmp.replace(path)
    return choice


def prepare_cpu_tower(visual: nn.Module) -> nn.Module:
    """The fused fp32 tower every runtime starts from (see fast_cpu.optimize_visual_for_cpu)."""
    return optimize_visual_for_cpu(visual, "fp32")
