"""The run report after the two-run demo scenario (3 videos + a corrupt one, then 2 more videos).

Everything is real: ffmpeg-encoded videos, the ViT-S-32 architecture, a Dagster instance, kaleido
with Debian's Chromium for the figures, poppler for reading the PDF back, and headless Chromium
for the interactive view.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.report.render import BROWSER_ENV
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline_tests.helpers import CliResult, add_videos, write_datasets_yaml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_tools = pytest.mark.skipif(
    not (CHROMIUM and shutil.which("pdftoppm") and shutil.which("pdftotext")),
    reason="needs Debian's chromium and poppler-utils (installed by scripts/setup.sh test)",
)
pytestmark = [needs_tools, pytest.mark.slow]  # slow tier: real runs (open_clip model, Dagster instance), Chromium


@dataclass
class Scenario:
    root: Path
    yaml: Path
    output: Path
    store: DatapoolStore
    tags: list[tuple[str, int]]  # `datapool tags` after the two runs: newest first, initial-tag last
    mp: pytest.MonkeyPatch

    def cli(self, *args: str) -> CliResult:
        from datapool_pipeline.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--datasets", str(self.yaml), *args])
        return CliResult(code, out.getvalue(), err.getvalue())

    def report_dir(self, tag: str) -> Path:
        return self.output / DatapoolStore.report_prefix(tag)

    def report(self, tag: str) -> dict:
        return json.loads((self.report_dir(tag) / "report.json").read_text())


def parse_tags(result: CliResult) -> list[tuple[str, int]]:
    assert result.code == 0, result.err
    return [(line.split()[0], int(line.split()[1])) for line in result.out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """The demo's first two runs, once for the module (the `cli` fixture is per test)."""
    root = tmp_path_factory.mktemp("report_scenario")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).resolve().parents[2] / "dagster.yaml").read_text())
    input_dir, output = root / "input" / "videos", root / "lightly"
    input_dir.mkdir(parents=True)
    yaml_path = write_datasets_yaml(root / "datasets.yaml", "videos-datapool", "VIDEOS", str(input_dir), str(output))
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home))
    mp.delenv(BROWSER_ENV, raising=False)
    s = Scenario(root, yaml_path, output, DatapoolStore(LocalStorage(output)), [], mp)
    try:
        add_videos(input_dir, ["a.mp4", "b.mp4", "c.mp4"], seconds=4)
        (input_dir / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(range(256)) * 8)
        first = s.cli("run", "videos-datapool", "--n-samples", "100")
        assert first.code == 0, first.err
        add_videos(input_dir, ["d.mp4", "e.mp4"], first_source=3, seconds=4)
        second = s.cli("run", "videos-datapool", "--use-datapool", "--n-samples", "50")
        assert second.code == 0, second.err
        s.tags = parse_tags(s.cli("tags", "videos-datapool"))
        assert [n for _, n in s.tags] == [50, 100, 150]
        yield s
    finally:
        mp.undo()


def run_tags(s: Scenario) -> list[str]:
    """The two runs' tags, oldest first."""
    return [t for t, _ in reversed(s.tags[:-1])]


def pages_png(pdf: Path, out: Path) -> list[Path]:
    out.mkdir(exist_ok=True)
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(pdf), str(out / "page")], check=True, timeout=120)
    return sorted(out.glob("page-*.png"))


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True,
                          timeout=60).stdout


def dark_fraction(png: Path) -> float:
    with Image.open(png) as im:
        grey = im.convert("L")
        hist = grey.histogram()
    return sum(hist[:200]) / (grey.width * grey.height)


def test_pdf_renders_and_states_the_datapool_numbers(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    older = 0
    for tag in run_tags(s):
        added = dict(s.tags)[tag]
        pdf = s.report_dir(tag) / "report.pdf"
        pages = pages_png(pdf, tmp_path / tag)
        assert len(pages) >= 4
        for page in pages:  # every page has content, not just a footer
            assert dark_fraction(page) > 0.005, page
        text = pdf_text(pdf)
        assert f"Datapool in: {older}" in text
        assert f"Datapool out: {older + added}" in text
        assert f"Samples added: {added}" in text
        assert "Figure not available" not in text  # Chromium is installed: the figures are there
        images = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True)
        # 3 figures (distances, embedding view, timeline) plus one thumbnail per pick shown.
        n_images = len(images.stdout.splitlines()) - 2
        assert n_images >= 3 + min(added, 20), images.stdout
        older += added
    assert older == s.tags[-1][1]


def test_report_json_agrees_with_the_datapool_tables(scenario: Scenario) -> None:
    s = scenario
    state = s.store.load_state()
    assert [c.tag for c in state.commits][:2] == run_tags(s)
    for commit in state.commits[:2]:
        report = s.report(commit.tag)
        samples = state.tag_samples(commit.tag)
        processed = pl.read_parquet(s.output / commit.processed_file)
        before = sum(c.n_samples for c in state.commits if c.seq < commit.seq)
        assert report["datapool"] == {"size_before": before, "size_after": before + samples.height,
                                      "samples_added": samples.height, "adopted_from_crashed_run": 0}
        assert report["tag"] == commit.tag and report["run_id"] == commit.run_id
        assert report["embedding_model"] == commit.embedding_model
        assert report["config"]["selection_config"]["n_samples"] == (100 if commit.seq == 1 else 50)

        per_video = dict(samples.group_by("raw_key").len().iter_rows())
        ok = processed.filter(pl.col("status") == "ok")
        assert {f["key"]: f["selected"] for f in report["per_file"]} == {k: per_video.get(k, 0) for k in ok["raw_key"]}
        assert {f["key"]: f["frames"] for f in report["per_file"]} == dict(ok.select("raw_key", "frames").iter_rows())
        for f in report["per_file"]:
            picked = samples.filter(pl.col("raw_key") == f["key"])["frame_index"].sort().to_list()
            assert f["selected_frames"] == picked
        assert report["input"]["videos"] == ok.height and report["input"]["images"] == 0
        assert report["input"]["frames_decoded"] == int(ok["frames"].sum())
        skipped = processed.filter(pl.col("status") != "ok")
        assert [x["key"] for x in report["input"]["skipped"]] == sorted(skipped["raw_key"].to_list())
        assert all(x["reason"] for x in report["input"]["skipped"])

        d = report["distances"]
        assert d["to_datapool_before"]["ours"]["count"] == (0 if before == 0 else samples.height)
        pool_d = samples["pool_distance"].to_numpy()
        if before:
            assert d["to_datapool_before"]["ours"]["mean"] == pytest.approx(float(pool_d.mean()), abs=1e-4)
        hist = d["nearest_in_tag"]["ours"]["histogram"]
        assert sum(hist["counts"]) == samples.height and len(hist["edges"]) == len(hist["counts"]) + 1
        stages = [t["stage"] for t in report["timings"]["stages"]]
        assert stages == ["raw_files", "embeddings", "selection", "tag", "checks"]
        assert report["timings"]["total_seconds"] >= sum(t["seconds"] for t in report["timings"]["stages"]) - 1
        points = pl.read_parquet(s.report_dir(commit.tag) / "embedding_2d.parquet")
        counts = dict(points.group_by("group").len().iter_rows())
        assert counts.get("previous", 0) == before and counts["this_run"] == samples.height
        assert counts.get("candidate", 0) == report["input"]["new_candidates"] - samples.height

    first = s.report(run_tags(s)[0])
    assert [x["key"] for x in first["input"]["skipped"]] == ["corrupt.mp4"]
    assert first["input"]["new_candidates"] == 120  # 3 videos x 4 s x 10 fps


def test_coverage_of_our_selection_beats_random(scenario: Scenario) -> None:
    for tag in run_tags(scenario):
        cov = scenario.report(tag)["coverage"]
        print(f"{tag}: coverage max ours {cov['ours']['max']:.4f} vs random {cov['random']['max']:.4f}; "
              f"mean ours {cov['ours']['mean']:.4f} vs random {cov['random']['mean']:.4f}")
        assert cov["candidates"] > cov["selected"]  # a real choice was made in both runs
        assert cov["ours"]["max"] <= cov["random"]["max"]
        assert cov["ours"]["mean"] <= cov["random"]["mean"]


PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
(function () { var o = console.error; console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, ' ')); o.apply(console, arguments); }; })();
</script>"""
PROBE_TAIL = """<script>setTimeout(function () {
  var d = document.getElementById('embedding-view'), counts = {}, hover = '';
  var traces = document.querySelectorAll('.scatterlayer .trace');
  (d && d.data || []).forEach(function (t, i) {
    counts[t.meta] = traces[i] ? traces[i].querySelectorAll('.point').length : -1; });
  try {
    var i = d.data.findIndex(function (t) { return t.meta === 'this_run'; });
    Plotly.Fx.hover(d, [{curveNumber: i, pointNumber: 0}]);
    hover = document.querySelector('.hoverlayer').textContent;
  } catch (e) { window.__errors.push('hover: ' + e); }
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({counts: counts, errors: window.__errors, hover: hover});
  document.body.appendChild(out);
}, 500);</script>"""


def probe_html(html_file: Path, work: Path) -> dict:
    """Load the view in headless Chromium; return the points drawn per trace, errors, and a hover label."""
    page = work / "probe.html"
    src = html_file.read_text()
    page.write_text(src.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={work / 'profile'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["console"] = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    return result


def test_html_view_loads_without_errors_one_point_per_sample(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    tag = run_tags(s)[-1]
    html_file = s.report_dir(tag) / "embedding_view.html"
    text = html_file.read_text()
    assert "<script src=" not in text  # self-contained: plotly.js is inlined, nothing to fetch
    result = probe_html(html_file, tmp_path)
    assert result["errors"] == [] and result["console"] == [], result
    report = s.report(tag)
    pool_size = report["datapool"]["size_after"]
    assert result["counts"]["previous"] + result["counts"]["this_run"] == pool_size == s.tags[-1][1]
    assert result["counts"]["this_run"] == report["datapool"]["samples_added"]
    assert result["counts"]["candidate"] == report["input"]["new_candidates"] - report["datapool"]["samples_added"]
    assert re.search(r"[de]\.mp4.*frame \d+", result["hover"]), result["hover"]


def test_dagster_materializations_link_the_report(scenario: Scenario) -> None:
    tag = run_tags(scenario)[-1]
    with dg.DagsterInstance.get() as instance:
        tag_events = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "tag"]), limit=10).records
        meta = next(e.asset_materialization.metadata for e in tag_events
                    if e.asset_materialization.metadata["tag"].value == tag)
        for name, file in (("report", "report.pdf"), ("report_json", "report.json"),
                           ("embedding_view", "embedding_view.html")):
            assert meta[name].value == str(scenario.report_dir(tag) / file)
            assert Path(meta[name].value).is_file()
        report_events = instance.fetch_materializations(dg.AssetKey(["videos_datapool", "report"]), limit=10).records
        meta = next(e.asset_materialization.metadata for e in report_events
                    if e.asset_materialization.metadata["tag"].value == tag)
        summary = meta["summary"].value
        assert "| datapool in -> out | 100 -> 150 |" in summary and "| samples added | 50 |" in summary
        assert Path(meta["report"].value).is_file()


def test_without_chromium_the_pdf_has_a_note_and_the_run_log_a_warning(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    s.mp.setenv(BROWSER_ENV, str(tmp_path / "no-such-chromium"))
    try:
        third = s.cli("run", "videos-datapool", "--use-datapool", "--process-all", "--n-samples", "5")
    finally:
        s.mp.delenv(BROWSER_ENV)
    assert third.code == 0, third.err
    tag = parse_tags(s.cli("tags", "videos-datapool"))[0][0]
    pdf = s.report_dir(tag) / "report.pdf"
    text = pdf_text(pdf)
    assert "Figure not available" in text and "apt-get install chromium" in text
    assert "Samples added: 5" in text and "Datapool out: 155" in text
    assert all(dark_fraction(p) > 0.005 for p in pages_png(pdf, tmp_path / "pages"))
    run_id = s.report(tag)["run_id"]
    with dg.DagsterInstance.get() as instance:
        warnings = [e.user_message for e in instance.all_logs(run_id)
                    if e.level == logging.WARNING and "figures left out of report.pdf" in e.user_message]
    assert warnings and BROWSER_ENV in warnings[0]
