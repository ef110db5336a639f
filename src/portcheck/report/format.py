"""Cell text of the report: every value goes through one of these formatters, and every table through
`markdown_table`, which escapes each cell and ends the table with the line naming where its figures come from.

Missing values are said to be missing ("absent", "not run", "unknown", "unavailable", "—"), never shown as 0."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

ABSENT, NOT_RUN, UNKNOWN, UNAVAILABLE, DASH = "absent", "not run", "unknown", "unavailable", "—"
YES, NO = "✅ yes", "❌ no"
STATUS_LABEL = {"ok": "✅ ok", "failed": "❌ failed", "not determined": "❔ not determined", NOT_RUN: "⚪ not run"}
INCONCLUSIVE = "inconclusive"
VERDICT_LABEL = {"pass": "✅ pass", "fail": "❌ fail", INCONCLUSIVE: "⚠ inconclusive", UNKNOWN: "❔ unknown",
                 NOT_RUN: "⚪ not run"}
VERDICT_STATUSES = ("pass", "fail", INCONCLUSIVE)
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")

# ---------------------------------------------------------------- text and tables

_CELL_ESCAPES = {
    "\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "~": "\\~", "[": "\\[", "]": "\\]", "$": "\\$",
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": "↵", "\r": "␍", "\t": "⇥",
}


def cell(value: Any, empty: str = "") -> str:
    """Text made safe for one markdown table cell: it cannot end the cell or the row, open a code span,
    emphasis, a link, math or HTML. Line breaks become visible marks, so generated text keeps its shape."""
    if value is None:
        return empty
    text = str(value)
    if text == "":
        return empty
    text = text.replace("\r\n", "\n")
    return "".join(_CELL_ESCAPES.get(char) or _control_mark(char) for char in text).strip()


def _control_mark(char: str) -> str:
    # Other control characters and Unicode line/paragraph separators also break lines in some renderers.
    if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return f"⟨U+{ord(char):04X}⟩"
    return char


def table(header: list[str], rows: list[list], source: str) -> dict:
    """A table as plain data; `source` names the artifact file(s) and key(s) its figures are read from."""
    return {"header": header, "rows": rows, "source": source}


def markdown_table(table: dict, source: str | None = None) -> str:
    """A `table` as a GitHub markdown table followed by its source line; every cell goes through `cell`.
    `source` is for tables built outside the report sections (the run history)."""
    header = table["header"]
    rows = table["rows"] or [[DASH] * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row!r}")
    source = table.get("source") or source
    if not source:
        raise ValueError(f"table with header {header!r} names no source")
    lines = [_row(header), "|" + "---|" * len(header), *(_row(row) for row in rows)]
    return "\n".join(lines) + f"\n\n*Source: {cell(source)}*"


def _row(values: list) -> str:
    return "| " + " | ".join(cell(v, empty=" ") for v in values) + " |"


def fence(text: str) -> str:
    """A code fence longer than any backtick run in `text`, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def is_cjk(text: str) -> bool:
    return bool(CJK.search(text or ""))


# ---------------------------------------------------------------- values


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing(value: Any, missing: str = UNAVAILABLE) -> str:
    """A value that is not a number: `missing` for None, anything else as it came (an artifact's own word)."""
    return missing if value is None else str(value)


def show(value: Any) -> str:
    """Any JSON value (adaptation values, settings) as short text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return num(value) if isinstance(value, float) else str(value)  # ints are ids and sizes: no separators


def num(value: Any) -> str:
    """A count with thousands separators, or a float to 4 significant digits (scientific when tiny or huge)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not is_number(value):
        return _missing(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3e}"
    return f"{value:.4g}"


def sci(value: Any) -> str:
    """KLD-sized numbers: 2.50e-05; exact zero stays 0."""
    if not is_number(value):
        return _missing(value)
    return "0" if value == 0 else f"{value:.2e}"


def pct(value: Any) -> str:
    """A share as a percentage that never rounds a near-miss up to 100% (or a trace down to 0%)."""
    if not is_number(value):
        return _missing(value)
    text = f"{value * 100:.2f}%"
    if text == "100.00%" and value < 1:
        return ">99.99%"
    if text == "0.00%" and value > 0:
        return "<0.01%"
    return text.replace(".00%", "%")


def precise(value: Any) -> str:
    """Cosine similarities: the interesting digits sit after 0.99."""
    return f"{value:.6f}" if is_number(value) else _missing(value)


def metric(name: str, value: Any) -> str:
    """A metric or threshold formatted by what its name says it measures."""
    if "kld" in name or "rel_err" in name:
        return sci(value)
    if any(word in name for word in ("agreement", "overlap", "ratio", "rate", "rms_delta_p", "rel_delta")):
        return pct(value)
    if "cosine" in name:
        return precise(value)
    return num(value)


def decimal(value: Any, places: int = 2, missing: str = UNKNOWN) -> str:
    """A plain decimal without separators: seconds, ratios, requests/s."""
    return f"{value:.{places}f}" if is_number(value) else missing


def ratio(value: Any) -> str:
    """A ratio of two figures; a dash where one of them is missing."""
    return decimal(value, missing=DASH)


def speedup(value: Any) -> str:
    return f"{value:.2f}×" if is_number(value) else DASH


def per_second(value: Any) -> str:
    """Tokens per second: 1,234.5."""
    return f"{value:,.1f}" if is_number(value) else UNKNOWN


def milliseconds(value: Any) -> str:
    """A duration stored in seconds, shown in ms."""
    return f"{value * 1e3:.2f}" if is_number(value) else _missing(value, UNKNOWN)


def byte_size(value: Any) -> str:
    """Bytes in the largest binary unit that keeps the figure at least 1."""
    if not is_number(value):
        return UNKNOWN
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def gib(value: Any) -> str:
    """Bytes in GiB always (RAM, checkpoint size), so sizes of one kind read alike."""
    return f"{value / 2**30:.2f} GiB" if is_number(value) else ABSENT


def millions(value: Any) -> str:
    return f"{value / 1e6:.1f}M ({value:,})" if is_number(value) else UNKNOWN


def bandwidth(value: Any) -> str:
    return f"{value / 1e12:.2f} TB/s" if is_number(value) else "unknown (not configured)"


def flops(value: Any) -> str:
    if not is_number(value):
        return UNKNOWN
    return f"{value / 1e12:.2f} TFLOPS" if value >= 1e11 else f"{value / 1e9:.2f} GFLOPS"


def check_figure(check: str, value: Any) -> str:
    """A consistency check's figure in its unit: tok/s for throughput checks, ms otherwise."""
    if "tok/s" in check:
        return per_second(value)
    return milliseconds(value) + " ms" if is_number(value) else _missing(value, UNKNOWN)
