"""Print a rich Table in full: as drawn when it fits the console, else one block of ``header value`` pairs per row.

rich shrinks a table that is wider than the console (80 columns when stdout is piped, ``$COLUMNS``
when set) and cuts cells with "…", so a CI log would read "38…" for a latency. Here a table that
does not fit at its natural width is printed as records instead, which wrap only between words:
every number appears whole.
"""

from __future__ import annotations

from typing import Any


def fits(table: Any, console: Any) -> bool:
    """True when ``table`` (a rich Table) renders at its natural width within ``console.width``."""
    wide = console.options.update_width(1 << 20)  # measured unclamped: rich clamps to the options' width
    return console.measure(table, options=wide).maximum <= console.width


def print_table(table: Any, console: Any = None) -> None:
    """Print ``table`` on ``console`` (default: a new stdout Console) without cutting any cell.

    Records layout (when the table is too wide): the title, then per row its first cell on one line
    and ``header value`` pairs of the other non-empty cells on the next, in the row's style.
    """
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    if fits(table, console):
        console.print(table)
        return
    if table.title:
        console.print(Text(str(table.title), style="bold"))
    headers = [str(c.header) for c in table.columns]
    cells = [list(c.cells) for c in table.columns]
    for i in range(table.row_count):
        row = [_text(col[i]) for col in cells]
        style = table.rows[i].style or ""
        first = row[0].copy()
        first.stylize("bold")
        pairs = [Text.assemble(f"{h} " if h else "", v) for h, v in zip(headers[1:], row[1:]) if v.plain.strip()]
        console.print(first, style=style)
        console.print(Text("  ") + Text("   ").join(pairs), style=style)


def _text(cell: Any) -> Any:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell
    return Text.from_markup(cell) if isinstance(cell, str) else Text(str(cell))
