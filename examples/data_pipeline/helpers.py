"""Plain helper functions shared by the task modules.

cpbuild tracks the code each task calls: editing ``parse_row`` reruns ``clean``
(and whatever its new value affects); editing ``markdown_table`` reruns only
``report``. Comments, docstrings and formatting are ignored.
"""

from __future__ import annotations

CITIES = ("Berlin", "Lisbon", "Oslo")


def parse_row(row: dict[str, str]) -> dict[str, object] | None:
    """Turn one raw CSV row into a clean record, or None when it is unusable."""
    city = row["city"].strip().title()
    try:
        temp = float(row["temp_c"])
    except ValueError:  # empty cell or "n/a": no usable reading that day
        return None
    precip = float(row["precip_mm"] or 0.0)  # a missing amount means no rain
    return {"date": row["date"].strip(), "city": city, "temp_c": temp, "precip_mm": precip}


def markdown_table(stats: dict[str, dict[str, float]]) -> str:
    """Render the per-city statistics as a Markdown table."""
    lines = [
        "| city | days | mean °C | min °C | max °C | stdev °C | rain mm | rainy days |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for city, s in sorted(stats.items()):
        lines.append(
            f"| {city} | {s['days']} | {s['mean']:.1f} | {s['min']:.1f} | {s['max']:.1f}"
            f" | {s['stdev']:.2f} | {s['rain_total']:.1f} | {s['rainy_days']} |"
        )
    return "\n".join(lines)
