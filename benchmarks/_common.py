"""Shared helpers for the side-by-side benchmarks: timing, memory, machine info, JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), recorded with every result: only same-machine ratios count."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict[str, Any]:
    import numpy
    import torch

    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    return {
        "cpu_model": cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def datasets_yaml(path: Path, name: str, input_dir: Path, output_dir: Path, model: str, video_fps: float | None = None
                  ) -> Path:
    """A datasets.yaml with one local VIDEOS dataset embedded by `model` with seeded random weights."""
    video = f"\n    video:\n      fps: {video_fps:g}" if video_fps else ""
    path.write_text(f"""datasets:
  {name}:
    type: VIDEOS
    input: {input_dir}
    output: {output_dir}
    embedding:
      model: {model}
      pretrained: none{video}
""")
    return path


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def traced(fn: Callable[[], T]) -> tuple[T, float, int]:
    """(result, seconds, peak bytes of Python/numpy allocations during the call, via tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        out, seconds = timed(fn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, seconds, peak


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_result(name: str, quick: bool, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    body = {
        "benchmark": name,
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "quick": quick,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(body, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path
