"""Per-city statistics computed from the `clean` task's value."""

import statistics


def task_stats(clean: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    # The parameter is named after the task `clean`, so it receives clean's return value.
    by_city: dict[str, list[dict[str, object]]] = {}
    for row in clean:
        by_city.setdefault(row["city"], []).append(row)
    stats = {}
    for city, rows in sorted(by_city.items()):
        temps = [r["temp_c"] for r in rows]
        rain = [r["precip_mm"] for r in rows]
        stats[city] = {
            "days": len(rows),
            "mean": round(statistics.fmean(temps), 2),
            "min": min(temps),
            "max": max(temps),
            "stdev": round(statistics.stdev(temps), 2),
            "rain_total": round(sum(rain), 1),
            "rainy_days": sum(1 for mm in rain if mm > 0),
        }
    return stats
