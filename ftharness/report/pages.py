"""The harness's HTML pages: each one self-contained (its style inline, pictures embedded, no network resource),
so that it opens offline and can be mailed as it is, with every text escaped. The sweep report
(ftharness/report/sweep_report.py) and the answers side by side (ftharness/report/answers.py) are built on it."""

import html
from typing import Callable, Dict, List


def html_page(title: str, style: str, body: str) -> str:
    """One page: `body` (HTML) under `title`, styled by `style` (CSS)."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>{body}</body></html>\n")


LONG_TEXT = 40  # characters: a cell longer than this (a pruned trial's reason) gets a width of its own
LONG_CELL = ' class="long"'  # without it the browser squeezes the column to a word and each row grows ten lines tall


def html_table(rows: List[Dict[str, str]], row_class: Callable[[Dict[str, str]], str] = lambda row: "") -> str:
    """Rows as a table, the first row's keys as its header; `row_class` names a row's CSS class ("" for none)."""
    if not rows:
        return "<p>(no runs)</p>"

    def cells(tag: str, values) -> str:
        return "".join(f"<{tag}{LONG_CELL if len(str(v)) > LONG_TEXT else ''}>{html.escape(str(v))}</{tag}>"
                       for v in values)

    def opening(row: Dict[str, str]) -> str:
        return f"<tr class=\"{row_class(row)}\">" if row_class(row) else "<tr>"

    body = "".join(f"{opening(row)}{cells('td', row.values())}</tr>\n" for row in rows)
    return f"<table><tr>{cells('th', rows[0])}</tr>\n{body}</table>"
