"""An hour of video, end to end (issue 12): one pipeline run vs the sum of its stages alone.

Generated 720p 30 fps H.264 videos (one ffmpeg test source per file, cached between runs), a VIDEOS dataset
on local folders with `video: {fps: 1}`, ViT-B-32 with seeded random weights (`pretrained: none`) and the
default embedding runtime. In one process:

  stages alone   decode: FrameStream (the pipeline's ffmpeg filter graph) of every file at fps 1 to the
                 model's input size, frames kept in memory; embed: load_model + embed_stream of those
                 frames; select: the production selection (strategies.select, default strategies) with k.
  the run        Datapool.open(...).run(n_samples=k) on an empty datapool: the real Dagster job on a
                 temporary instance, as a user runs it; wall clock of the whole call.

Target: run <= 1.3 x (decode + embed + select). The JSON also holds where the run's time went: per-step
seconds and the gaps between steps from the Dagster event log, the steps' own log lines, and (unless
--no-extra) the extra passes the run makes measured alone: the frame-manifest decode, the full-resolution
PNGs of the picks, the report.

    python benchmarks/bench_hour.py --quick    # 6 x 1 min (360 frames sampled), a few minutes on 2 cores
    python benchmarks/bench_hour.py            # 6 x 10 min = one hour (3,600 frames), 15-30 min
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks._common import datasets_yaml, write_result  # noqa: E402
from benchmarks._video import looped, video_from_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.3
DATASET = "hour"
# One ffmpeg test source per file, so files look different (`name=options`; size and rate are added).
SOURCES = [
    "testsrc2",
    "mandelbrot",
    "life=mold=10:ratio=0.1:death_color=#C83232:life_color=#00ff00",
    "cellauto=rule=110",
    "smptehdbars",
    "gradients",
]
SIZE, RATE = "1280x720", 30
MANIFEST_SIZE = 32  # the frames step's decode size (workflow/frames.py, while the run has that step)


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def generate(cache: Path, files: int, seconds: float, clip: float) -> tuple[list[Path], float]:
    """The videos (cached under folders named by the parameters); seconds spent generating now. Each file
    is `clip` seconds of its own test source, encoded, then looped by stream copy to `seconds` when longer:
    encoding a real hour takes longer than the benchmark itself on 2 busy cores."""
    start = time.perf_counter()
    clips = cache / f"hour-{files}x{clip:g}s-{SIZE}-{RATE}fps-h264-v1"
    clips.mkdir(parents=True, exist_ok=True)
    folder = clips if seconds <= clip else cache / f"hour-{files}x{seconds:g}s-loop{clip:g}s-{SIZE}-{RATE}fps-h264-v1"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        source = SOURCES[i % len(SOURCES)]
        name = f"{i:02d}-{source.split('=')[0]}.mp4"
        if not (clips / name).exists():
            print(f"generating {clips / name} ({clip:g} s of {source.split('=')[0]} at {SIZE} {RATE} fps)...",
                  flush=True)
        path = video_from_source(clips / name, source, min(clip, seconds), SIZE, RATE)
        paths.append(path if folder == clips else looped(path, folder / name, seconds))
    return paths, time.perf_counter() - start


def stages_alone(spec: Any, paths: list[Path], fraction: float) -> dict[str, Any]:
    """decode, embed and select alone, in that order, on the same files and settings as the run."""
    import open_clip

    from datapool_pipeline.config import parse_run_config
    from datapool_pipeline.embedding import load_model
    from datapool_pipeline.media.video import FrameStream
    from datapool_pipeline.selection import strategies

    size = int(open_clip.get_model_config(spec.embedding.model)["vision_cfg"]["image_size"])
    frames: list[np.ndarray] = []
    start = time.perf_counter()
    for path in paths:
        stream = FrameStream(str(path), size, **spec.video.frame_options())
        frames.extend(stream)
        if stream.error:
            raise SystemExit(f"decoding {path} failed: {stream.error}")
    decode = time.perf_counter() - start
    print(f"decode alone: {len(frames)} frames of {len(paths)} files in {decode:.1f}s", flush=True)

    forget_models()  # the run loads its model too: both pay for it once
    start = time.perf_counter()
    model = load_model(spec.embedding)
    loaded = time.perf_counter() - start
    assert model.image_size == size, (model.image_size, size)
    vectors = np.concatenate(list(model.embed_stream(iter(frames))))
    embed = time.perf_counter() - start
    print(f"embed alone: {len(vectors)} frames in {embed:.1f}s (model load {loaded:.1f}s, {model.precision})",
          flush=True)
    del frames
    gc.collect()

    k = max(1, int(len(vectors) * fraction))
    selection = parse_run_config({"selection_config": {"n_samples": k}}).selection_config
    start = time.perf_counter()
    outcome = strategies.select(vectors, k, selection, pool=np.empty((0, model.dim), np.float32), seed=spec.seed)
    select = time.perf_counter() - start
    print(f"select alone: {len(outcome.result.picks)} of {len(vectors)} in {select:.2f}s", flush=True)
    info = {"precision": model.precision, "runtime": getattr(model, "runtime", None),
            "runtime_note": getattr(model, "runtime_note", None), "batch_size": model.batch_size, "dim": model.dim,
            "image_size": size,
            "device": str(model.device)}
    forget_models()
    del model
    gc.collect()
    return {"frames": len(vectors), "k": k, "picks": len(outcome.result.picks), "decode_seconds": decode,
            "embed_seconds": embed, "model_load_seconds": loaded, "select_seconds": select, "model": info}


def forget_models() -> None:
    """Empty load_model's in-process cache (the run must load its own model, as a user's run does)."""
    from datapool_pipeline.embedding import model as module

    for name in dir(module):
        clear = getattr(getattr(module, name), "cache_clear", None)
        if callable(clear):
            clear()


def the_run(datasets: Path, k: int) -> tuple[float, Any, list[tuple[float, str]]]:
    """Datapool.run as a user calls it; (wall seconds, commit, the run's own log lines with their time)."""
    from datapool_pipeline import Datapool

    forget_models()  # a model loaded by an earlier repetition's run stays cached: this run loads its own
    lines: list[tuple[float, str]] = []
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            commit = Datapool.open(DATASET, datasets=datasets).run(
                n_samples=k, log=lambda m: lines.append((time.perf_counter() - start, m)))
        except Exception:
            sys.__stderr__.write(err.getvalue()[-3000:])
            raise
    return time.perf_counter() - start, commit, lines


def run_breakdown(run_id: str, wall: float, wall_started: float) -> dict[str, Any]:
    """Where the run's wall time went, from the Dagster event log: per step, the gaps between steps, and
    before/after the Dagster run; each step's log lines with their offset from the step's start."""
    import dagster as dg

    steps: dict[str, dict[str, Any]] = {}
    run_start = run_end = None
    messages: list[dict[str, Any]] = []
    with dg.DagsterInstance.get() as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            kind = event.event_type if event else None
            name = (entry.step_key or "").split("__")[-1]
            if kind == dg.DagsterEventType.RUN_START:
                run_start = entry.timestamp
            elif kind in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE):
                run_end = entry.timestamp
            elif kind == dg.DagsterEventType.STEP_START:
                steps[name] = {"start": entry.timestamp}
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and name in steps:
                steps[name]["end"] = entry.timestamp
            elif event is None and entry.step_key and name in steps:
                messages.append({"step": name, "at": round(entry.timestamp - steps[name]["start"], 3),
                                 "message": entry.user_message[:300]})
    if run_start is None or run_end is None:
        return {"error": "no RUN_START / RUN_SUCCESS in the event log"}
    order = sorted(steps.items(), key=lambda kv: kv[1]["start"])
    step_seconds = {n: round(s["end"] - s["start"], 3) for n, s in order if "end" in s}
    gaps = []
    previous = run_start
    for _, s in order:
        gaps.append(s["start"] - previous)
        previous = s.get("end", s["start"])
    return {
        "steps": step_seconds,
        "before_dagster_run": round(run_start - wall_started, 3),
        "run_start_to_first_step": round(gaps[0], 3) if gaps else None,
        "between_steps": round(sum(gaps[1:]), 3),
        "last_step_to_run_end": round(run_end - previous, 3),
        "after_dagster_run": round(wall_started + wall - run_end, 3),
        "dagster_run_seconds": round(run_end - run_start, 3),
        "step_log": messages,
    }


def extra_alone(spec: Any, store_read: Any, paths: list[Path], report: Any, manifest_pass: bool) -> dict[str, Any]:
    """The passes the run makes beyond decode + embed + select, each measured alone: the frame manifest
    (a frames step, where the run has one: every file decoded at 32 px), the picks as full-resolution PNGs
    (tag step), the report."""
    from datapool_pipeline.media.video import FrameStream, extract_frames_png

    manifest = None
    if manifest_pass:
        start = time.perf_counter()
        for path in paths:
            for _ in FrameStream(str(path), MANIFEST_SIZE, **spec.video.frame_options()):
                pass
        manifest = time.perf_counter() - start
    picks = store_read().group_by("raw_key").agg("frame_index")
    by_name = {p.name: p for p in paths}
    start = time.perf_counter()
    png_bytes = 0
    for key, indices in picks.iter_rows():
        pngs = extract_frames_png(str(by_name[Path(key).name]), indices, **spec.video.frame_options())
        png_bytes += sum(len(b) for b in pngs.values())
    pngs_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report()
    report_seconds = time.perf_counter() - start
    print(f"extra passes alone: frame manifest {manifest or 0:.1f}s, pick PNGs {pngs_seconds:.1f}s, report "
          f"{report_seconds:.1f}s", flush=True)
    return {"manifest_decode_seconds": manifest, "pick_pngs_seconds": pngs_seconds, "pick_png_megabytes":
            png_bytes / 1e6, "report_seconds": report_seconds}


def attribute(stages: dict[str, Any], wall: float, breakdown: dict[str, Any], extra: dict[str, Any] | None
              ) -> list[dict[str, Any]]:
    """The run's time by step, next to the stage work it contains (`stage`) and, for the extra passes,
    the same work measured alone: `excess` = run - stage is what the run adds over the stages."""
    share = {"embeddings": stages["decode_seconds"] + stages["embed_seconds"], "selection": stages["select_seconds"]}
    alone_key = {"frames": "manifest_decode_seconds", "tag": "pick_pngs_seconds", "report": "report_seconds"}
    rows = []
    for step, seconds in breakdown.get("steps", {}).items():
        alone = (extra or {}).get(alone_key.get(step, ""))
        rows.append({"part": f"{step} step", "run": seconds, "stage_share": share.get(step, 0.0), "alone": alone})
    rows.append({"part": "outside the steps (prepare_run, job set-up, Dagster events)",
                 "run": wall - sum(breakdown.get("steps", {}).values()), "stage_share": 0.0, "alone": None})
    for row in rows:
        row["excess"] = row["run"] - row["stage_share"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 x 1 min instead of 6 x 10 min")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, help="seconds per file (default 600, --quick 60)")
    parser.add_argument("--clip", type=float, default=60.0,
                        help="seconds of distinct content per file, looped (stream copy) to --seconds")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--fps", type=float, default=1.0, help="video.fps of the dataset")
    parser.add_argument("--fraction", type=float, default=0.1, help="n_samples as a fraction of the frames")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "DATAPOOL_BENCH_CACHE", Path(tempfile.gettempdir()) / "datapool-bench-cache")),
        help="where generated videos are kept between runs ($DATAPOOL_BENCH_CACHE)")
    parser.add_argument("--no-extra", action="store_true", help="skip measuring the run's extra passes alone")
    parser.add_argument("--repeats", type=int, help="alternating repetitions (default: 2 with --quick, else 1)")
    parser.add_argument("--generate-only", action="store_true", help="only make (or find) the cached videos")
    args = parser.parse_args()
    loadavg_at_start = os.getloadavg()
    seconds = args.seconds or (60.0 if args.quick else 600.0)
    args.repeats = args.repeats or (2 if args.quick else 1)
    paths, generated = generate(args.cache, args.files, seconds, args.clip)
    if args.generate_only:
        print(f"{len(paths)} videos in {paths[0].parent} ({generated:.0f}s generating)")
        return
    commit_sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "datapool_pipeline")
    print(f"{len(paths)} files, {len(paths) * seconds / 60:g} min of {SIZE} {RATE} fps video "
          f"({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB); commit {commit_sha[:8]}"
          + (" + uncommitted changes in datapool_pipeline/" if dirty else ""), flush=True)

    start = time.perf_counter()
    import dagster  # noqa: F401

    from datapool_pipeline.datasets import load_datasets
    from datapool_pipeline.running import create_instance_storage

    imports = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-hour-") as tmp_name:
        tmp = Path(tmp_name)
        input_dir = tmp / "in"
        input_dir.mkdir()
        for path in paths:  # hard links to the cached files (a copy across file systems)
            if path.stat().st_dev == input_dir.stat().st_dev:
                os.link(path, input_dir / path.name)
            else:
                shutil.copy(path, input_dir / path.name)
        inputs = sorted(input_dir.iterdir())
        reps: list[dict[str, Any]] = []
        stages: dict[str, Any] = {}
        for rep in range(args.repeats):
            # A fresh, empty datapool and Dagster instance per repetition; the order alternates (stages
            # first, then the run first) so that load from other work on the machine hits both alike.
            home = tmp / f"dagster_home_{rep}"
            home.mkdir()
            shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
            os.environ["DAGSTER_HOME"] = str(home)
            create_instance_storage(home)  # once per instance (a user's persists), so not timed with the run
            datasets = datasets_yaml(tmp / f"datasets_{rep}.yaml", DATASET, input_dir, tmp / f"out_{rep}", args.model,
                                     args.fps)
            spec = load_datasets(datasets)[DATASET]
            order = ["stages", "run"] if rep % 2 == 0 else ["run", "stages"]
            for what in order:
                if what == "stages":
                    print(f"[{rep + 1}/{args.repeats}] stages alone...", flush=True)
                    stages = stages_alone(spec, inputs, args.fraction)
                    continue
                print(f"[{rep + 1}/{args.repeats}] the run: n_samples {stages['k']}...", flush=True)
                wall_started = time.time()
                wall, commit, lines = the_run(datasets, stages["k"])
                if commit is None:
                    raise SystemExit("the run committed no tag")
                print(f"the run: {wall:.1f}s, tag {commit.tag} with {commit.n_samples} samples", flush=True)
                breakdown = run_breakdown(commit.run_id, wall, wall_started)
                breakdown["run_log"] = [{"at": round(t, 3), "message": m[:300]} for t, m in lines]
            total = stages["decode_seconds"] + stages["embed_seconds"] + stages["select_seconds"]
            extra = None
            if not args.no_extra and rep == args.repeats - 1:
                from datapool_pipeline import Datapool

                pool = Datapool.open(DATASET, datasets=datasets)
                extra = extra_alone(spec, lambda pool=pool: pool.read("latest"), inputs,
                                    lambda pool=pool, tag=commit.tag: pool.report(tag),
                                    manifest_pass="frames" in breakdown.get("steps", {}))
            reps.append({"order": order, "stages_alone": stages, "sum_of_stages_seconds": total,
                         "run_wall_seconds": wall, "ratio_run_over_sum": wall / total, "tag": commit.tag,
                         "samples_committed": commit.n_samples, "where_the_time_went": attribute(stages, wall,
                         breakdown, extra), "run_breakdown": breakdown, "extra_passes_alone": extra})
            report(reps[-1], rep, args.repeats)
    total = sum(r["sum_of_stages_seconds"] for r in reps)
    wall = sum(r["run_wall_seconds"] for r in reps)
    ratio = wall / total
    frames = stages["frames"]
    each = ", ".join(f"{r['ratio_run_over_sum']:.2f}" for r in reps)
    print(f"\nover {len(reps)} repetition(s): run {wall / len(reps):.1f}s, stages {total / len(reps):.1f}s (mean); "
          f"ratio {ratio:.2f} (per repetition: {each}); target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'NOT met'}; run {frames * len(reps) / wall:.2f} frames/s")
    write_result("hour", args.quick, {
        "commit": commit_sha,
        "uncommitted_pipeline_changes": dirty.splitlines(),
        "parameters": {"files": len(paths), "seconds_per_file": seconds, "video_minutes": len(paths) * seconds / 60,
                       "distinct_seconds_per_file": min(args.clip, seconds),
                       "resolution": SIZE, "source_fps": RATE, "codec": "h264 libx264 veryfast yuv420p",
                       "sources": [SOURCES[i % len(SOURCES)].split("=")[0] for i in range(len(paths))],
                       "input_megabytes": sum(p.stat().st_size for p in paths) / 1e6,
                       "video_fps": args.fps, "model": args.model, "pretrained": None,
                       "precision_env": os.environ.get("DATAPOOL_CPU_PRECISION"),
                       "runtime_env": os.environ.get("DATAPOOL_EMBEDDING_RUNTIME"), "fraction": args.fraction,
                       "n_samples": stages["k"], "frames": frames, "repeats": len(reps)},
        "generation_seconds_this_time": generated,
        "import_seconds": imports,
        "sum_of_stages_seconds_mean": total / len(reps),
        "run_wall_seconds_mean": wall / len(reps),
        "ratio_run_over_sum": ratio,
        "run_frames_per_second": frames * len(reps) / wall,
        "target": TARGET,
        "target_met": ratio <= TARGET,
        "repetitions": reps,
        "loadavg_at_benchmark_start": loadavg_at_start,
        "loadavg_at_end": os.getloadavg(),
    })


def report(rep: dict[str, Any], i: int, n: int) -> None:
    stages, wall, total = rep["stages_alone"], rep["run_wall_seconds"], rep["sum_of_stages_seconds"]
    print(f"\n[{i + 1}/{n}] order: {' then '.join(rep['order'])}")
    print(f"{'':44s} {'seconds':>9s}")
    for name, value in (("decode alone (FrameStream, fps 1, 224 px)", stages["decode_seconds"]),
                        ("embed alone (load_model + embed_stream)", stages["embed_seconds"]),
                        ("select alone (strategies.select)", stages["select_seconds"]),
                        ("sum of the stages", total), ("the run (Datapool.run, wall)", wall)):
        print(f"{name:44s} {value:9.1f}")
    ratio = rep["ratio_run_over_sum"]
    print(f"{'ratio run / sum':44s} {ratio:9.2f}   target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}")
    print(f"{'run frames/s (sampled frames / wall)':44s} {stages['frames'] / wall:9.2f}")
    print(f"\n{'where the run time went':60s} {'run':>7s} {'stage':>7s} {'excess':>7s} {'alone':>7s}")
    for row in rep["where_the_time_went"]:
        alone = "" if row.get("alone") is None else f"{row['alone']:7.1f}"
        print(f"{row['part']:60s} {row['run']:7.1f} {row['stage_share']:7.1f} {row['excess']:7.1f} {alone:>7s}")
    breakdown = rep["run_breakdown"]
    outside = {k: breakdown.get(k) for k in ("before_dagster_run", "run_start_to_first_step", "between_steps",
                                             "last_step_to_run_end", "after_dagster_run")}
    print("outside the steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in outside.items() if v is not None),
          flush=True)


if __name__ == "__main__":
    main()
