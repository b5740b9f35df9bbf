"""report.pdf (reportlab), drawn from report.json, the 2D points and the selected samples' images.

Page 1 is the 30-second summary and how the samples were chosen (per strategy); then distances (ours vs
random), the embedding view, the per-video table and timeline, thumbnails of the first picks, and the details
(skipped files, timings, config).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import polars as pl
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Image,
    KeepTogether,
    PageBreak,
    Paragraph,
    Preformatted,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from datapool_pipeline.report.figures import distances_figure, embedding_figure, timeline_figure
from datapool_pipeline.report.render import BROWSER_ENV, FiguresUnavailable, render_pngs
from datapool_pipeline.workflow.progress import Log, no_log

ReadImage = Callable[[dict[str, Any]], "bytes | None"]
WIDTH = A4[0] - 3 * cm
TABLE_ROWS_MAX = 60
BLUE, ORANGE, GREY = colors.HexColor("#1f6fd1"), colors.HexColor("#f28e2b"), colors.HexColor("#666666")
_DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


def _fonts() -> tuple[str, str, str]:
    """(regular, bold, arrow): DejaVu when installed (full Unicode for file names), else Helvetica."""
    if "DejaVuSans-Bold" in pdfmetrics.getRegisteredFontNames():
        return "DejaVuSans", "DejaVuSans-Bold", "→"
    try:
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(_DEJAVU / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(_DEJAVU / "DejaVuSans-Bold.ttf")))
        pdfmetrics.registerFontFamily("DejaVuSans", normal="DejaVuSans", bold="DejaVuSans-Bold", italic="DejaVuSans",
                           boldItalic="DejaVuSans-Bold")
        return "DejaVuSans", "DejaVuSans-Bold", "→"
    except Exception:  # noqa: BLE001 - fonts are cosmetic
        return "Helvetica", "Helvetica-Bold", "->"


class _Styles:
    def __init__(self) -> None:
        self.font, self.bold, self.arrow = _fonts()
        base = getSampleStyleSheet()
        self.body = ParagraphStyle("body", parent=base["BodyText"], fontName=self.font, fontSize=10, leading=14)
        self.small = ParagraphStyle("small", parent=self.body, fontSize=8, leading=10)
        self.caption = ParagraphStyle("caption", parent=self.body, fontSize=9, leading=12, textColor=GREY)
        self.h1 = ParagraphStyle("h1", parent=base["Title"], fontName=self.bold, fontSize=20, leading=24,
                                 alignment=0, spaceAfter=4)
        self.h2 = ParagraphStyle("h2", parent=base["Heading2"], fontName=self.bold, fontSize=14, leading=18,
                                 spaceBefore=6, spaceAfter=6)
        self.big = ParagraphStyle("big", parent=self.body, fontName=self.bold, fontSize=26, leading=30,
                                  alignment=1, textColor=BLUE)
        self.label = ParagraphStyle("label", parent=self.body, fontSize=9, leading=11, alignment=1,
                                    textColor=GREY)
        self.note = ParagraphStyle("note", parent=self.body, backColor=colors.HexColor("#fff4e0"),
                                   borderColor=ORANGE, borderWidth=1, borderPadding=8, spaceBefore=8,
                                   spaceAfter=12)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _table(rows: list[list[Any]], widths: list[float], *, header: bool = True, font: str = "Helvetica") -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [
        ("FONTNAME", (0, 0), (-1, -1), font),
        ("FONTSIZE", (0, 0), (-1, -1), 9),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd")),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]
    if header:
        style += [("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef3fb")),
                  ("LINEBELOW", (0, 0), (-1, 0), 0.8, BLUE)]
    table.setStyle(TableStyle(style))
    return table


def _png(data: bytes, width: float) -> Image:
    image = Image(io.BytesIO(data))
    image.drawHeight = width * image.imageHeight / image.imageWidth
    image.drawWidth = width
    return image


def _figure_or_note(pngs: dict[str, bytes] | None, name: str, width: float, note: Callable[[], Paragraph]) -> Any:
    return _png(pngs[name], width) if pngs and name in pngs else note()


def _first_page(r: dict[str, Any], s: _Styles) -> list[Any]:
    pool, inp, cov = r["datapool"], r["input"], r["coverage"]
    media = []
    if inp["videos"]:
        media.append(f"{inp['videos']} video{'s' if inp['videos'] != 1 else ''}")
    if inp["images"]:
        media.append(f"{inp['images']} image{'s' if inp['images'] != 1 else ''}")
    frames_word = "frames" if r["dataset_type"] == "VIDEOS" else "images"
    headline = Table(
        [
            [Paragraph(str(pool["size_before"]), s.big), Paragraph(s.arrow, s.big),
             Paragraph(str(pool["size_after"]), s.big), Paragraph(f"+{pool['samples_added']}", s.big)],
            [Paragraph(f"Datapool in: {pool['size_before']}", s.label), "",
             Paragraph(f"Datapool out: {pool['size_after']}", s.label),
             Paragraph(f"Samples added: {pool['samples_added']}", s.label)],
        ],
        colWidths=[WIDTH * 0.28, WIDTH * 0.1, WIDTH * 0.28, WIDTH * 0.34],
    )  # fmt: skip
    headline.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.8, colors.HexColor("#c9d9f2")),
                                  ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f5f8fd")),
                                  ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                                  ("TOPPADDING", (0, 0), (-1, 0), 12), ("BOTTOMPADDING", (0, 1), (-1, 1), 10)]))
    source = " and ".join(media) or "no decodable files"
    story: list[Any] = [
        Paragraph(f"Datapool report · {escape(r['dataset'])}", s.h1),
        Paragraph(f"Tag <b>{escape(r['tag'])}</b> · run {escape(r['run_id'])} · committed {escape(r['created_at'])}",
                  s.caption),
        Spacer(1, 14),
        headline,
        Spacer(1, 14),
        Paragraph(
            f"This run added <b>{pool['samples_added']}</b> samples to the datapool, chosen from "
            f"<b>{inp['new_candidates']}</b> new {frames_word} of <b>{source}</b> "
            f"({inp['frames_decoded']} {frames_word} decoded). "
            + (f"<b>{inp['raw_files_skipped']}</b> file(s) were skipped as corrupt or of the wrong type "
               "(listed at the end)." if inp["raw_files_skipped"] else "No file was skipped."),
            s.body,
        ),
        *_inputs_paragraph(r, s),
        Spacer(1, 6),
        Paragraph(
            "<b>Did the new samples fill the gaps?</b> Coverage asks how far the worst-covered new "
            f"{frames_word[:-1]} is from the nearest datapool-or-selected sample (smaller is better). "
            f"Our selection: max <b>{_fmt(cov['ours']['max'])}</b>, mean <b>{_fmt(cov['ours']['mean'])}</b>; "
            f"a random selection of the same size: max {_fmt(cov['random']['max'])}, "
            f"mean {_fmt(cov['random']['mean'])}.",
            s.body,
        ),
        Spacer(1, 10),
    ]  # fmt: skip
    d = r["distances"]
    timings = r.get("timings") or {}
    rows = [
        ["", "our selection", "random (same size)"],
        ["coverage: max distance of a new sample", _fmt(cov["ours"]["max"]), _fmt(cov["random"]["max"])],
        ["coverage: mean distance of a new sample", _fmt(cov["ours"]["mean"]), _fmt(cov["random"]["mean"])],
        ["mean distance to the datapool before", _fmt(d["to_datapool_before"]["ours"]["mean"]),
         _fmt(d["to_datapool_before"]["random"]["mean"])],
        ["mean nearest neighbour within the tag", _fmt(d["nearest_in_tag"]["ours"]["mean"]),
         _fmt(d["nearest_in_tag"]["random"]["mean"])],
    ]  # fmt: skip
    story += [_table(rows, [WIDTH * 0.5, WIDTH * 0.25, WIDTH * 0.25], font=s.font), Spacer(1, 12)]
    facts = [
        ["raw files processed", f"{inp['raw_files_processed']} ({inp['videos']} videos, {inp['images']} images)"],
        [f"{frames_word} decoded", str(inp["frames_decoded"])],
        ["new candidate samples", f"{inp['new_candidates']} (plus {inp['already_in_datapool']} already in the "
                                  "datapool)"],
        ["files skipped", str(inp["raw_files_skipped"])],
        ["embedding model", r["embedding_model"]],
        ["run time (ingest to commit)", _seconds(timings.get("total_seconds"))],
    ]  # fmt: skip
    story.append(_table([[Paragraph(escape(str(a)), s.body), Paragraph(escape(str(b)), s.body)] for a, b in facts],
                        [WIDTH * 0.35, WIDTH * 0.65], header=False, font=s.font))
    return story


def _per_file_section(
    r: dict[str, Any], s: _Styles, pngs: dict[str, bytes] | None, note: Callable[[], Paragraph]
) -> list[Any]:
    videos = r["dataset_type"] == "VIDEOS"
    files = sorted(r["per_file"], key=lambda f: (-f["selected"], f["key"]))
    head = ["video", "frames", "new", "selected", "picked frames"] if videos else ["file", "new", "selected"]
    rows: list[list[Any]] = [head]
    for f in files[:TABLE_ROWS_MAX]:
        if videos:
            picked = ", ".join(str(i) for i in f["selected_frames"][:30]) + (" …" if f["selected"] > 30 else "")
            rows.append([Paragraph(escape(f["key"]), s.small), f["frames"], f["candidates"], f["selected"],
                         Paragraph(picked, s.small)])
        else:
            rows.append([Paragraph(escape(f["key"]), s.small), f["candidates"], f["selected"]])
    widths = ([WIDTH * 0.34, WIDTH * 0.1, WIDTH * 0.08, WIDTH * 0.1, WIDTH * 0.38] if videos
              else [WIDTH * 0.6, WIDTH * 0.2, WIDTH * 0.2])  # fmt: skip
    story: list[Any] = [Paragraph("Samples per " + ("video" if videos else "file"), s.h2),
                        _table(rows, widths, font=s.font)]
    if len(files) > TABLE_ROWS_MAX:
        story.append(Paragraph(f"… and {len(files) - TABLE_ROWS_MAX} more files (all are in report.json).",
                               s.caption))
    if videos:
        story += [Spacer(1, 10), KeepTogether([  # the heading never ends a page without its figure
            Paragraph("Timeline of picked frames", s.h2), _figure_or_note(pngs, "timeline", WIDTH, note),
            Paragraph("One bar per video (its length); a blue tick at every frame this run selected.", s.caption)])]
    return story


def _thumbnail_grid(r: dict[str, Any], s: _Styles, read_image: ReadImage) -> list[Any]:
    from datapool_pipeline.media.image import decode_image

    cells: list[Any] = []
    cols = 4
    cell_w = WIDTH / cols - 6
    for thumb in r["thumbnails"]:
        data = read_image(thumb)
        label = thumb["raw_key"] + (f" · frame {thumb['frame_index']}" if thumb["frame_index"] >= 0 else "")
        caption = Paragraph(escape(label if len(label) <= 48 else "…" + label[-47:]), s.small)
        if data is None:
            cells.append([Paragraph("(image not readable)", s.small), caption])
            continue
        try:
            # As the pipeline decodes it (upright, RGB, reduced when large); it passed the dataset's
            # images.max_decoded_megabytes when it was decoded for embedding, so no bound here.
            im = decode_image(data, min_side=300, max_decoded_megabytes=None)
            im.thumbnail((400, 300))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            cells.append([_png(buf.getvalue(), cell_w), caption])
        except Exception:  # noqa: BLE001 - one bad image must not lose the report
            cells.append([Paragraph("(image not readable)", s.small), caption])
    if not cells:
        return [Paragraph("No samples were selected.", s.body)]
    rows = [cells[i : i + cols] + [""] * (cols - len(cells[i : i + cols])) for i in range(0, len(cells), cols)]
    grid = Table(rows, colWidths=[WIDTH / cols] * cols, hAlign="LEFT")
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 8)]))
    return [grid]


def _inputs_paragraph(r: dict[str, Any], s: _Styles) -> list[Any]:
    """Which input the files and picks came from, for a dataset that grows from several."""
    inputs = r.get("inputs") or []
    if len(inputs) < 2:
        return []
    parts = [
        f"<b>{escape(i['name'] or '(unnamed)')}</b> ({escape(i['location'])}): {i['raw_files_processed']} file(s), "
        f"{i['samples_added']} sample(s) added"
        for i in inputs
    ]
    return [Spacer(1, 4), Paragraph("By input: " + "; ".join(parts) + ".", s.body)]


def _strategies_block(r: dict[str, Any], s: _Styles) -> list[Any]:
    """How the samples were chosen: the strategies, their settings and what each did (report.json strategies)."""
    from datapool_pipeline.report.strategies import summary_rows

    section = r.get("strategies")
    if not section:
        return []
    story: list[Any] = [Paragraph("How the samples were chosen", s.h2)]
    if section["recorded"]:
        filters = section.get("filters")
        dropped = ", ".join(f"{n} {why}" for why, n in (filters or {}).items())
        removed = [f"the degenerate-frame filter dropped {dropped}"] if filters else []
        thresholds = [e["result"]["removed"] for e in section["entries"]
                      if e["type"] == "THRESHOLD" and e["result"]]  # fmt: skip
        if thresholds:
            removed.append(f"THRESHOLD removed {sum(thresholds)}")
        pool = (f"Of <b>{section['new_samples']}</b> new samples, " + "; ".join(removed) + ", leaving "
                f"<b>{section['candidates']}</b> candidates" if removed
                else f"All <b>{section['candidates']}</b> new samples were candidates")
        story.append(Paragraph(
            f"{pool}; the greedy selection picked <b>{section['selected']}</b> of the <b>{section['requested']}</b> "
            "requested.", s.body))  # fmt: skip
    else:
        story.append(Paragraph(escape(section["note"] or "not recorded"), s.caption))
    rows: list[list[Any]] = [["strategy", "settings", "what it did"]] + [
        [Paragraph(escape(a), s.small), Paragraph(escape(b), s.small), Paragraph(escape(c), s.small)]
        for a, b, c in summary_rows(section)
    ]
    story.append(_table(rows, [WIDTH * 0.2, WIDTH * 0.25, WIDTH * 0.55], font=s.font))
    return story


def _details(r: dict[str, Any], s: _Styles) -> list[Any]:
    inp = r["input"]
    story: list[Any] = [Paragraph("Skipped files", s.h2)]
    if inp["skipped"]:
        rows = [["file", "reason"]] + [
            [Paragraph(escape(x["key"]), s.small), Paragraph(escape(x["reason"]), s.small)]
            for x in inp["skipped"][:TABLE_ROWS_MAX]
        ]
        story.append(_table(rows, [WIDTH * 0.35, WIDTH * 0.65], font=s.font))
        if len(inp["skipped"]) > TABLE_ROWS_MAX:
            story.append(Paragraph(f"… and {len(inp['skipped']) - TABLE_ROWS_MAX} more (see report.json).",
                                   s.caption))
    else:
        story.append(Paragraph("None: every raw file of the run was decoded.", s.body))
    timings = r.get("timings") or {}
    story.append(Paragraph("Timings per stage", s.h2))
    if timings.get("stages"):
        rows = [["stage", "started (UTC)", "duration"]] + [
            [t["stage"], t.get("started_at") or "", _seconds(t.get("seconds"))] for t in timings["stages"]
        ]
        story.append(_table(rows, [WIDTH * 0.3, WIDTH * 0.45, WIDTH * 0.25], font=s.font))
    else:
        story.append(Paragraph("Not recorded (report built outside a Dagster run).", s.body))
    story += [
        Paragraph("Run configuration", s.h2),
        Preformatted(json.dumps(r["config"], indent=2), ParagraphStyle("code", parent=s.small, fontName="Courier")),
        Paragraph("Files of this report", s.h2),
        Paragraph("<br/>".join(escape(v) for v in r["files"].values()), s.small),
    ]
    for note in r.get("notes") or []:
        story.append(Paragraph("Note: " + escape(note), s.caption))
    return story


def render_pdf(
    report: dict[str, Any],
    points: pl.DataFrame,
    read_image: ReadImage,
    *,
    warn: Log = no_log,
    browser: str | None = None,
) -> bytes:
    """The PDF bytes. Figures are rendered with kaleido; without Chromium a note takes their place."""
    s = _Styles()
    figures = {
        "distances": (distances_figure(report), 1000, 1050),
        "embedding": (embedding_figure(points, report, interactive=False), 1000, 820),
    }
    timeline = timeline_figure(report)
    if timeline is not None:
        figures["timeline"] = (timeline, 1000, int(timeline.layout.height or 400))
    pngs: dict[str, bytes] | None
    try:
        pngs = render_pngs(figures, browser=browser)
        reason = ""
    except FiguresUnavailable as exc:
        pngs, reason = None, str(exc)
        warn(f"report {report['tag']}: figures left out of report.pdf: {reason}. Install Chromium (Debian: "
             f"apt-get install chromium) or set {BROWSER_ENV} to a Chrome/Chromium executable.")
    def note() -> Paragraph:
        return Paragraph(
            f"<b>Figure not available:</b> {escape(reason)}. Figures are rendered by kaleido with a headless "
            f"Chromium: install it (Debian: <font face='Courier'>apt-get install chromium</font>) or set "
            f"<font face='Courier'>{BROWSER_ENV}</font> to a Chrome/Chromium executable, and the next report "
            "will include them. All numbers are in report.json; the interactive view is embedding_view.html.",
            s.note,
        )
    counts = report["embedding_2d"]["points"]
    story = _first_page(report, s)
    story += [
        Spacer(1, 12),
        KeepTogether(_strategies_block(report, s)),  # page 1, or page 2 when page 1 is full
        PageBreak(),
        Paragraph("Distances: our selection vs random", s.h2),
        _figure_or_note(pngs, "distances", WIDTH, note),
        Paragraph(
            "Top: for every new candidate, the distance to its nearest datapool-or-selected sample (coverage; "
            "mass near 0 and a short tail is good). Middle: how far the selected samples are from the datapool "
            "before the run (far is good: they add something new; empty when the datapool was empty). Bottom: "
            "distance from each selected sample to its nearest other selected sample (far is good: no "
            f"near-duplicates). Random baseline: {report['coverage']['selected']} samples drawn uniformly from "
            f"the same {report['coverage']['candidates']} candidates (seed {report['coverage']['random_seed']}); "
            "where the bars overlap they look brown.",
            s.caption,
        ),
        Spacer(1, 16),
        KeepTogether([
            Paragraph("Embedding view", s.h2),
            _figure_or_note(pngs, "embedding", WIDTH, note),
            Paragraph(
                f"PCA of the embeddings (2 components). Grey: the {counts['previous']} samples in the datapool "
                f"before this run; blue: the {counts['this_run']} it selected; faint: the {counts['candidate']} "
                "new samples it did not select. Interactive version with file names: embedding_view.html.",
                s.caption,
            ),
        ]),
        Spacer(1, 12),
        *_per_file_section(report, s, pngs, note),
        PageBreak(),
        Paragraph(f"The first {len(report['thumbnails'])} picks", s.h2),
        Paragraph("In pick order: the first picks are the samples farthest from everything else.", s.caption),
        *_thumbnail_grid(report, s, read_image),
        PageBreak(),
        *_details(report, s),
    ]  # fmt: skip
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=A4, leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.5 * cm, bottomMargin=1.5 * cm,
        title=f"Datapool report {report['dataset']} {report['tag']}", author="datapool_pipeline",
    )  # fmt: skip

    def footer(canvas: Any, _doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(s.font, 8)
        canvas.setFillColor(GREY)
        canvas.drawString(1.5 * cm, 1 * cm, f"{report['dataset']} · tag {report['tag']}")
        canvas.drawRightString(A4[0] - 1.5 * cm, 1 * cm, f"page {canvas.getPageNumber()}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
