"""report.html in a browser: every table fits or scrolls in its own box, numbers stay on one line, long notes go
under their table, and the smoke run's report fits a 1280 px window with every figure loaded."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers.report.html import LONG_NOTE, STYLE, table_html

NOTE = "measured speed-up is far below the claim: the seed counted the embedding matrix out of the parameters " * 2
WIDE = pd.DataFrame({
    "model": ["S1_Half_3x384", "S5_Minimal_2x192 <b>"],
    **{f"latency_ms_b{b}_{stat}": [12.3456, 1.5] for b in (1, 8, 32, 64) for stat in ("median", "iqr", "min")},
    "accuracy": ["0.812 ± 0.010", "0.790 ± 0.012"],
    "95% CI": ["[+0.001, +0.034]", "[-0.020, +0.011]"],
    "note": [NOTE, "short note"],
})


def test_tables_scroll_in_a_box_keep_numbers_whole_and_move_long_notes_below():
    page = table_html(WIDE, key="t3")
    assert page.startswith('<div class="table-wrap"><table>')
    assert '<td class="num">0.812 ± 0.010</td>' in page and '<td class="num">[+0.001, +0.034]</td>' in page
    assert '<td class="num">12.35</td>' in page
    assert '<td class="text">S5_Minimal_2x192 &lt;b&gt;</td>' in page  # escaped
    assert '<td class="ref"><a href="#t3-note-1">[1]</a></td>' in page and '<td class="text">short note</td>' in page
    assert f'<ol class="notes"><li id="t3-note-1">{NOTE}</li></ol>' in page
    assert "latency_<wbr>ms_<wbr>b1_<wbr>median" in page
    assert len(NOTE) > LONG_NOTE > len("short note")
    assert table_html("stage 04 did not run") == "<p>stage 04 did not run</p>"


# --- in headless Chromium --------------------------------------------------------------------------------------------

def _open(chrome, path: Path) -> None:
    chrome.get(path.as_uri())
    chrome.execute_script("return document.readyState")  # get() waits for the load event; images are in by then


def _fits(chrome) -> tuple[int, int]:
    return chrome.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")


def test_a_wide_table_scrolls_inside_its_box(browser, tmp_path):
    page = tmp_path / "wide.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>"
                    f"<h1>wide</h1>{table_html(WIDE)}</body></html>", encoding="utf-8")
    _open(browser, page)
    scroll_width, inner_width = _fits(browser)
    assert scroll_width <= inner_width
    box = browser.execute_script("const w = document.querySelector('.table-wrap');"
                                 "return [w.scrollWidth, w.clientWidth]")
    assert box[0] > box[1], "the table is wider than the page, so its box scrolls"
    rows = browser.execute_script("return Array.from(document.querySelectorAll('tbody tr')).map(r => r.offsetHeight)")
    assert max(rows) < 60, f"a row is {max(rows)} px high: long notes belong under the table"
    one_line = browser.execute_script(
        "return Array.from(document.querySelectorAll('td.num')).every(td => td.getClientRects().length === 1"
        " && getComputedStyle(td).whiteSpace === 'nowrap')")
    assert one_line


def test_smoke_report_fits_a_1280px_window(browser, smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    _open(browser, smoke_run / "report.html")
    scroll_width, inner_width = _fits(browser)
    assert scroll_width <= inner_width, f"the page is {scroll_width} px wide in a {inner_width} px window"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    assert images and all(complete and width > 0 for _, complete, width in images), images
    text = " ".join(browser.find_element("tag name", "body").text.split())
    assert " ".join(summary["headline"].split()) in text
