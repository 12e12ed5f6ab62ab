"""What the self-contained HTML pages (the screening report, the audit report) share: a width
estimate for SVG text, so that chart titles, labels and legends are never cut, and the style
that keeps a page within a 1280-pixel window, long values wrapping instead of scrolling."""

from __future__ import annotations

import unicodedata

# Fits 1280 px without sideways scrolling: the page is at most 1200 px wide, tables take its
# width, and long tokens (identifiers, evidence, session ids) wrap; wide tables fix their columns.
PAGE_STYLE = """*{box-sizing:border-box}
body{font:14px/1.45 system-ui,"Noto Sans CJK SC",sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 16px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;width:100%}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg{max-width:100%;height:auto}svg text{font:12px system-ui,"Noto Sans CJK SC",sans-serif;fill:#222}
svg text.t{font-size:13px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.warn{color:#b2182b}.ok{color:#1a7f37}"""


def text_width(text: str, size: float = 12.0) -> float:
    """A generous estimate of the pixels ``text`` takes in a sans-serif font of ``size``:
    wide (CJK) characters an em, others 0.62 em."""
    wide = sum(unicodedata.east_asian_width(c) in "WF" for c in text)
    return size * (wide + 0.62 * (len(text) - wide))
