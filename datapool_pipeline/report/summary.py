"""The headline numbers of a report as a Markdown table (Dagster materialization metadata)."""

from __future__ import annotations

from typing import Any


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def headline_markdown(report: dict[str, Any]) -> str:
    pool, inp, cov = report["datapool"], report["input"], report["coverage"]
    rows = [
        ("tag", report["tag"]),
        ("datapool in -> out", f"{pool['size_before']} -> {pool['size_after']}"),
        ("samples added", pool["samples_added"]),
        ("raw files processed (videos / images)", f"{inp['raw_files_processed']} ({inp['videos']} / {inp['images']})"),
        ("frames decoded", inp["frames_decoded"]),
        ("new candidate samples", inp["new_candidates"]),
        ("files skipped", inp["raw_files_skipped"]),
        ("coverage max: ours / random", f"{_num(cov['ours']['max'])} / {_num(cov['random']['max'])}"),
        ("coverage mean: ours / random", f"{_num(cov['ours']['mean'])} / {_num(cov['random']['mean'])}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
