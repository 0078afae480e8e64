"""Charts drawn on the server as SVG geometry (bars, axes, labels) that the
templates render: no chart library and no script in the browser."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Colours for up to 15 labels (the taxonomy), then they repeat.
PALETTE = ("#0b5cad", "#e07b00", "#2e8b57", "#b3261e", "#6a4c93", "#00838f", "#8d6e63", "#c2185b",
           "#546e7a", "#9e9d24", "#3949ab", "#f4511e", "#00897b", "#7cb342", "#5d4037")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class Chart:
    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    #: ``(x, y, text, anchor)``.
    texts: list[tuple[float, float, str, str]] = field(default_factory=list)
    #: ``(x1, y1, x2, y2, colour)``.
    lines: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)


def stacked_days(per_day: list[tuple[str, str, int]], days: list[str], width: int = 900,
                 height: int = 260) -> Chart:
    """Messages per day (every day of ``days``, empty ones too), each bar stacked by label."""
    labels = sorted({lab for _, lab, _ in per_day})
    colour = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}
    totals = {d: sum(n for dd, _, n in per_day if dd == d) for d in days}
    top = max(totals.values(), default=0) or 1
    chart = Chart(width, height, legend=[(lab, colour[lab]) for lab in labels])
    left, bottom, plot_h = 40, height - 30, height - 50
    step = (width - left - 10) / max(len(days), 1)
    for i, d in enumerate(days):
        y = bottom
        for _, lab, n in sorted((x for x in per_day if x[0] == d), key=lambda x: x[1]):
            h = plot_h * n / top
            y -= h
            chart.bars.append(Bar(left + i * step + 1, y, min(max(step - 2, 1), 48), h, colour[lab],
                                  f"{d} {lab}: {n}"))
        if len(days) <= 16 or i % max(len(days) // 8, 1) == 0:
            chart.texts.append((left + i * step + step / 2, bottom + 14, d[5:], "middle"))
    chart.lines.append((left, bottom, width - 10, bottom, "#888"))
    chart.texts.append((left - 4, bottom - plot_h + 4, str(top), "end"))
    chart.texts.append((left - 4, bottom, "0", "end"))
    return chart


def shares(rows: list[tuple[str, float | None]], goal: float, width: int = 560, row_h: int = 18) -> Chart:
    """Horizontal bars of a share (0-1) per key, with the goal drawn as a line."""
    left, right = 150, 50
    height = row_h * len(rows) + 30
    chart = Chart(width, height)
    span = width - left - right
    for i, (key, share) in enumerate(rows):
        y = 10 + i * row_h
        value = share or 0.0
        colour = "#2e8b57" if share is not None and share >= goal else "#b3261e"
        chart.bars.append(Bar(left, y + 2, span * value, row_h - 5, colour,
                              f"{key}: {'no responses' if share is None else f'{share:.0%}'}"))
        chart.texts.append((left - 6, y + row_h - 6, key, "end"))
        chart.texts.append((left + span * value + 4, y + row_h - 6, "—" if share is None else f"{share:.0%}", "start"))
    x = left + span * goal
    chart.lines.append((x, 4, x, height - 16, "#333"))
    chart.texts.append((x, height - 4, f"goal {goal:.0%}", "middle"))
    return chart
