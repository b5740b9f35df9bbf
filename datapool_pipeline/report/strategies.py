"""report.json `strategies`: the configured strategies with their settings and what each did.

Settings come from the commit's run config; outcomes from the commit's selection record
(Commit.selection, selection/record.py). Tags committed before the record existed get the settings
and `recorded: false` with a note saying the outcomes were not recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from datapool_pipeline.selection.record import finite, value_stats

NOT_RECORDED = (
    "not recorded: this tag was committed before the selection's per-strategy outcome was kept with the "
    "commit (its settings are from the run config)"
)
_DEFAULT = [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY", "strength": 1.0}}]


PickValues = Callable[[str], "np.ndarray | None"]


def strategies_section(
    config: dict[str, Any], record: dict[str, Any], samples: pl.DataFrame, pick_values: PickValues | None = None
) -> dict[str, Any]:
    """`pick_values(key)`: a built-in metadata key's values of the tag's samples (from the shard caches), for
    a record that lacks the WEIGHTS statistics."""
    selection = (config or {}).get("selection_config") or {}
    configured = selection.get("strategies") or _DEFAULT
    recorded = bool(record)
    entries = [_entry(e, record if recorded else None, samples, pick_values) for e in configured]
    section: dict[str, Any] = {"recorded": recorded, "note": None if recorded else NOT_RECORDED, "entries": entries}
    if recorded:
        section.update({
            "new_samples": record.get("new_samples"),
            "filters": record.get("filtered"),
            "candidates": record.get("candidates"),
            "requested": record.get("requested"),
            "selected": record.get("selected"),
            "stop_reason": record.get("stop_reason"),
        })  # fmt: skip
    return section


def _entry(
    raw: dict[str, Any], record: dict[str, Any] | None, samples: pl.DataFrame, pick_values: PickValues | None
) -> dict[str, Any]:
    inp = dict(raw.get("input") or {})
    setting = dict(raw.get("strategy") or {})
    kind = str(setting.pop("type", "DIVERSITY"))
    entry: dict[str, Any] = {"type": kind, "input": inp, "settings": setting, "result": None}
    if kind == "DIVERSITY":
        # From the tag's samples, so known for every tag: the smallest distance a greedy pick had.
        picked = samples["pick_distance"].to_numpy().astype(np.float64) if samples.height else np.empty(0)
        entry["smallest_pick_distance"] = value_stats(picked)["min"]
    if record is None:
        return entry
    if kind == "DIVERSITY":
        entry["result"] = {
            "requested": record.get("requested"), "selected": record.get("selected"),
            "stop_reason": record.get("stop_reason"),
            "stopping_condition_minimum_distance": setting.get("stopping_condition_minimum_distance"),
            "datapool_margin": setting.get("datapool_margin"),
            "first_distance": finite(record.get("first_distance")),
        }  # fmt: skip
    elif kind == "TYPICALITY":
        entry["result"] = {"strength": setting.get("strength", 1.0), **(record.get("typicality") or {})}
    elif kind == "SIMILARITY":
        found = record.get("similarity") or {}
        entry["result"] = {
            "query": "text" if inp.get("text") is not None else "keys",
            "queries": list(inp.get("text") or inp.get("keys") or []),
            "strength": setting.get("strength", 1.0),
            "picks": {"mean": found.get("picks_mean"), "min": found.get("picks_min"), "max": found.get("picks_max")},
            "candidates": {"mean": found.get("candidates_mean"), "max": found.get("candidates_max")},
        }  # fmt: skip
    elif kind == "THRESHOLD":
        entry["result"] = next((t for t in record.get("thresholds") or [] if t.get("key") == inp.get("key")), None)
    elif kind == "WEIGHTS":
        entry["result"] = next((w for w in record.get("weights") or [] if w.get("key") == inp.get("key")), None)
        values = pick_values(str(inp.get("key"))) if entry["result"] is None and pick_values is not None else None
        if values is not None:  # recorded without the WEIGHTS statistics: the picks' values from the caches
            entry["result"] = {"key": inp.get("key"), "strength": setting.get("strength", 1.0),
                               "picks": value_stats(values), "candidates": None,
                               "unknown": int(np.isnan(values).sum())}
    else:  # a strategy that stages its outcome under its own name (BALANCE: "balance", one per key)
        found = record.get(kind.lower())
        if isinstance(found, list):
            found = next((b for b in found if isinstance(b, dict) and b.get("key") == inp.get("key")), None)
        entry["result"] = found
    return entry


def summary_rows(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(strategy, settings, what it did) for the PDF's "How the samples were chosen" block."""
    rows = []
    for e in section["entries"]:
        kind, inp, setting, result = e["type"], e["input"], e["settings"], e["result"]
        name = kind + (f" on {inp['key']}" if inp.get("key") else "")
        shown = {k: v for k, v in setting.items() if not (k == "strength" and kind == "THRESHOLD")}  # unused
        settings = ", ".join(f"{k.replace('stopping_condition_', '').replace('_', ' ')} {_v(v)}"
                             for k, v in shown.items()) or "-"
        did = _did(kind, inp, result, e) if section["recorded"] else "not recorded"
        rows.append((name, settings, did))
    return rows


def _v(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_v(v)}" for k, v in value.items()) + "}"
    return str(value)


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _did(kind: str, inp: dict[str, Any], result: Any, entry: dict[str, Any]) -> str:
    if result is None:
        return "not recorded"
    if kind == "DIVERSITY":
        why = {"requested": "as many as requested", "only_copies_left": "stopped: only copies of the datapool left",
               "minimum_distance": "stopped at the minimum distance"}.get(result["stop_reason"], result["stop_reason"])
        return (f"selected {result['selected']} of {result['requested']} requested ({why}); smallest pick "
                f"distance {_f(entry.get('smallest_pick_distance'))}")
    if kind == "TYPICALITY":
        did = f"preferred dense regions with strength {_v(result['strength'])}"
        if result.get("picks") and result.get("candidates"):
            did += (f"; picks' kNN density mean {_f(result['picks']['mean'])} vs all new samples "
                    f"{_f(result['candidates']['mean'])} (1: densest)")
        return did
    if kind == "SIMILARITY":
        queries = "; ".join(f'"{q}"' if result["query"] == "text" else q for q in result["queries"][:3])
        more = f" (+{len(result['queries']) - 3})" if len(result["queries"]) > 3 else ""
        return (f"queries {queries}{more}: picks' similarity mean {_f(result['picks']['mean'])} (min "
                f"{_f(result['picks']['min'])}, max {_f(result['picks']['max'])}); all new samples mean "
                f"{_f(result['candidates']['mean'])}")
    if kind == "THRESHOLD":
        unknown = f" ({result['unknown']} without a value)" if result.get("unknown") else ""
        rule = f"{inp.get('key')} {result['operation']} {_v(result['threshold'])}"
        return f"kept {rule}: removed {result['removed']}{unknown}"
    if kind == "WEIGHTS":
        among = f"; candidates mean {_f(result['candidates']['mean'])}" if result.get("candidates") else ""
        return (f"picks' {result['key']} mean {_f(result['picks']['mean'])} (min {_f(result['picks']['min'])}, max "
                f"{_f(result['picks']['max'])}){among}")
    if kind == "BALANCE" and isinstance(result, dict) and "achieved" in result:
        return "datapool + picks now " + ", ".join(
            f"{c} {result['achieved'].get(c, 0):.0%} (target {t:.0%}, was {result.get('before', {}).get(c, 0):.0%})"
            for c, t in (result.get("target") or {}).items()
        )
    return _v(result)
