"""report.html: one self-contained page (no code, figures inlined) built from summary.json and the report's tables."""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.answer{background:#f3f7fb;border-left:4px solid #2b6cb0;padding:.8em 1em}
.warn{background:#fff4e5;border-left:4px solid #dd6b20;padding:.8em 1em}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top}
th{background:#f5f5f5;text-align:left}td.num{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums}
td.text{min-width:8em;max-width:36em}td.ref a{text-decoration:none}
ol.notes{font-size:12px;color:#444;margin:.3em 0 1em;padding-left:2.2em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#555}iframe{width:100%;height:650px;border:1px solid #ccc}
.meta{font-size:12px;color:#666;overflow-wrap:anywhere}
"""
NOTE_COLUMNS = ("note", "notes")
LONG_NOTE = 80  # characters: a longer note moves under its table, so it does not stretch the row
# Text that is a number as the report's tables write them: 0.812, +0.012, 0.81 ± 0.01, [0.78, 0.84], 3.2x, 2x64.
NUMERIC = re.compile(r"^(?=.*\d)[\s\d.,+\-−–±%x×\[\]()eE]+$")
STAGES = {"01": "Data", "02": "Teacher", "03": "Students", "04": "Attributions", "05": "Benchmark and report"}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _text(value: Any) -> str:
    """A cell's value as text: floats to 4 significant digits, missing values as an en dash."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _is_number(value: Any, text: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.number)) or text == "–" or bool(NUMERIC.match(text))


def _header(name: Any) -> str:
    """A column name, escaped; a long snake_case name may break after its underscores (latency_ms_b32_iqr)."""
    text = _esc(name)
    return text.replace("_", "_<wbr>") if len(text) > 12 else text


def table_html(df: pd.DataFrame | str, key: str = "t") -> str:
    """A table in its own horizontally scrolling box; numbers on one line; long notes as a numbered list below.

    Every cell is HTML-escaped; long snake_case header names may break after their underscores. A cell longer than
    LONG_NOTE characters in a column named note/notes is replaced by a reference `[n]` to item n of the list under
    the table (anchors `key-note-n`, so `key` must be unique on the page). A string is shown as a paragraph.
    """
    if isinstance(df, str):
        return f"<p>{_esc(df)}</p>"
    head = "".join(f"<th>{_header(c)}</th>" for c in df.columns)
    note_cols = {i for i, c in enumerate(df.columns) if str(c).strip().lower() in NOTE_COLUMNS}
    rows, notes = [], []
    for record in df.itertuples(index=False, name=None):
        cells = []
        for i, value in enumerate(record):
            text = _text(value)
            if i in note_cols and len(text) > LONG_NOTE:
                notes.append(text)
                n = len(notes)
                cells.append(f'<td class="ref"><a href="#{key}-note-{n}">[{n}]</a></td>')
            else:
                cls = "num" if _is_number(value, text) else "text"
                cells.append(f'<td class="{cls}">{_esc(text)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    parts = [f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table></div>"]
    if notes:
        parts.append('<ol class="notes">' + "".join(f'<li id="{key}-note-{n}">{_esc(t)}</li>'
                                                    for n, t in enumerate(notes, start=1)) + "</ol>")
    return "\n".join(parts)


def figure_html(path: Path, caption: str) -> str:
    """A PNG inlined as base64 with a caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_esc(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _figures(run: Path) -> list[str]:
    parts = []
    for number, title in STAGES.items():
        pngs = sorted((run / "figures").glob(f"{number}_*.png"))
        if pngs:
            parts.append(f"<h3>{number} · {_esc(title)}</h3>")
            parts += [figure_html(p, f"figures/{p.name}") for p in pngs]
    return parts


def _examples(run: Path) -> list[str]:
    page = run / "attributions" / "examples.html"
    if not page.is_file():
        return ["<p>Stage 04 did not run: no attribution examples.</p>"]
    # srcdoc is an attribute, so the whole page is escaped once more; sandbox="" forbids scripts in the frame.
    return ['<p>Token attributions for a few test cases (also in '
            '<a href="attributions/examples.html">attributions/examples.html</a>):</p>',
            f'<iframe sandbox="" srcdoc="{html.escape(page.read_text(encoding="utf-8"), quote=True)}"></iframe>']


def render_report(run_dir: str | Path, summary: dict[str, Any], tables: Mapping[str, pd.DataFrame]) -> str:
    """The report page: headline, verdicts, recommendation, tables, every stage's figures, attribution examples."""
    run = Path(run_dir)
    t, rec = summary["teacher"], summary["recommendation"]
    box = "warn" if t["collapsed"] or not rec["meaningful"] else "answer"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Distilling Justice · "
             f"{_esc(summary['profile'])}</title><style>{STYLE}</style></head><body>",
             "<h1>Distilling Justice: independent training vs true distillation</h1>",
             f"<p class='meta'>profile <b>{_esc(summary['profile'])}</b> · created {_esc(summary['created'])} · "
             f"teacher {_esc(t['name'])} ({t['params'] / 1e6:.1f}M parameters)</p>",
             f"<p><b>Question.</b> {_esc(summary['question'])}</p>",
             f"<div class='{box}'><p><b>Answer.</b> {_esc(summary['headline'])}</p><ul>",
             *[f"<li><code>{_esc(v['model'])}</code> · {_esc(v['arm'])} vs {_esc(v['against'])}: {_esc(v['text'])}</li>"
               for v in summary["verdicts"]],
             "</ul>",
             *([f"<p><b>Do they explain like the teacher?</b> Attribution cosine to the teacher, its own family "
                f"(Holm-adjusted). {_esc(summary.get('attribution_scope') or '')}</p><ul>",
                *[f"<li><code>{_esc(v['model'])}</code> · {_esc(v['text'])}</li>"
                  for v in summary["attribution_verdicts"]], "</ul>"] if summary.get("attribution_verdicts") else []),
             f"<p><b>Recommendation.</b> {_esc(rec['text'])}</p></div>"]
    if t["collapsed"]:
        parts.append(f"<p class='warn'>The teacher collapsed: its test accuracy {t['accuracy']:.3f} does not beat "
                     f"the majority class. Every distillation comparison in this run is marked not meaningful.</p>")
    for i, (title, df) in enumerate(tables.items(), start=1):
        parts += [f"<h2>{_esc(title)}</h2>", table_html(df, key=f"t{i}")]
    parts += ["<h2>Figures</h2>", *_figures(run), "<h2>Attribution examples</h2>", *_examples(run)]
    env = (summary.get("benchmark") or {}).get("environment") or {}
    if env:
        parts.append("<p class='meta'>Timing environment: "
                     + " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in env.items()) + "</p>")
    parts.append("<p class='meta'>Machine-readable: <a href='summary.json'>summary.json</a>. Executed notebooks: "
                 "<a href='notebooks/'>notebooks/</a>.</p></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, summary: dict[str, Any], tables: Mapping[str, pd.DataFrame]) -> Path:
    """Write `report.html` into the run folder."""
    path = Path(run_dir) / "report.html"
    path.write_text(render_report(run_dir, summary, tables), encoding="utf-8")
    return path
