"""Markdown tables and the number formats in them, for every report in tfcompress.

    >>> print(markdown_table(("layer", "params"), [("conv1", format_count(320))]))
"""


def format_kb(n):
    """Bytes as ``"12.3 KB"``."""
    return f"{n / 1024:.1f} KB"


def format_count(n):
    """A count as ``"320.8 k"``, ``"12.5 M"`` (``"—"`` for 0 or None)."""
    if not n:
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(int(n))


def markdown_table(header, rows, title=None, footer=None):
    """A markdown table with padded columns; ``title`` above and ``footer`` below if given."""
    widths = [max(len(str(r[i])) for r in [header] + list(rows)) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [title] if title else []
    out += [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    if footer:
        out.append(footer)
    return "\n".join(out)
