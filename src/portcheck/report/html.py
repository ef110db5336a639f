"""The markdown report as one self-contained HTML page (for `snakemake --report report.html`, which shows HTML
but offers markdown only as a download): markdown-it-py (CommonMark + tables), raw HTML off, and the report's
plots embedded as data: URIs so the page needs no files beside it."""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from portcheck.atomic import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code,pre{background:#f6f6f6}pre{padding:.6em;overflow:auto}
img{max-width:100%}blockquote{border-left:4px solid #ddd;margin-left:0;padding-left:1em;color:#444}"""


def markdown_to_html(text: str, title: str = "portcheck report") -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough").render(text)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def embed_images(page: str, base_dir: str | os.PathLike) -> str:
    """<img src="plot.png"> -> a data: URI when the file is beside the report; other sources stay as they are."""
    base = Path(base_dir).resolve()

    def replace(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        path = (base / src).resolve()
        if "://" in src or src.startswith("data:") or base not in path.parents or not path.is_file():
            return match.group(0)
        kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower())
        if kind is None:
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}data:{kind};base64,{data}"'

    return re.sub(r'(<img[^>]*?\ssrc=")([^"]*)"', replace, page)


def render_html(markdown_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    from urllib.parse import unquote

    markdown_path = Path(markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "portcheck report")
    page = markdown_to_html(text, title)
    page = re.sub(r'(<img[^>]*?\ssrc=")([^"]*)"', lambda m: f'{m.group(1)}{unquote(m.group(2))}"', page)
    with atomic_path(out_path) as tmp:
        tmp.write_text(embed_images(page, markdown_path.parent), encoding="utf-8")
