"""A partner's reject and duplicate rates per day as a small SVG chart, drawn on the server.

Only the geometry is computed here; the template writes the SVG elements (auto-escaped like any
other value), so a chart needs no JavaScript and no charting library.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from storage.console import PartnerDay

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 24


@dataclass(frozen=True)
class Bar:
    day: str
    x: float
    width: float
    reject_y: float           # top of the reject-rate bar
    duplicate_y: float        # the duplicate-rate point
    jobs: int
    reject_rate: float
    duplicate_rate: float


@dataclass(frozen=True)
class RateChart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    baseline: float
    ticks: tuple[tuple[float, str], ...]      # (y, label) of the rate axis
    labels: tuple[tuple[float, str], ...]     # (x, label) of some days
    duplicate_line: str                       # polyline points of the duplicate rate, days with jobs

    @property
    def empty(self) -> bool:
        return not any(b.jobs for b in self.bars)


def rate_chart(days: list[PartnerDay], today: date, span: int = 30) -> RateChart:
    by_day = {d.day: d for d in days}
    first = today - timedelta(days=span - 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / span
    peak = max([d.reject_rate for d in days] + [d.duplicate_rate for d in days] + [0.0])
    top = next((t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0) if peak <= t), 1.0)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - min(rate, top) / top)

    bars = []
    for n in range(span):
        day = (first + timedelta(days=n)).isoformat()
        found = by_day.get(day)
        reject = found.reject_rate if found else 0.0
        duplicate = found.duplicate_rate if found else 0.0
        bars.append(Bar(day, LEFT + n * step + step * 0.15, step * 0.7, y(reject), y(duplicate),
                        found.jobs if found else 0, reject, duplicate))
    line = " ".join(f"{b.x + b.width / 2:.1f},{b.duplicate_y:.1f}" for b in bars if b.jobs)
    ticks = tuple((y(top * f), f"{top * f:.0%}" if top >= 0.05 else f"{top * f:.1%}") for f in (0, 0.5, 1))
    labels = tuple((b.x + b.width / 2, b.day[5:]) for i, b in enumerate(bars)
                   if (i % 7 == 0 and i <= span - 4) or i == span - 1)
    return RateChart(WIDTH, HEIGHT, tuple(bars), y(0), ticks, labels, line)
