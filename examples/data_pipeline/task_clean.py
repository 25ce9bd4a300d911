"""Read the raw CSV and return the cleaned rows as a Python value (no file written)."""

import csv
from pathlib import Path

from helpers import parse_row


def task_clean(raw: Path = Path("data/measurements.csv")) -> list[dict[str, object]]:
    # `raw` has a Path default, so it is an input file: editing the CSV reruns this task.
    with raw.open(newline="") as f:
        rows = [parse_row(row) for row in csv.DictReader(f)]
    return sorted(
        (r for r in rows if r is not None),
        key=lambda r: (r["city"], r["date"]),
    )
