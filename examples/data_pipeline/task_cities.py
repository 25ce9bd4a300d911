"""A parametrized task: one JSON summary per city, build/cities/CITY.json."""

import json
from pathlib import Path
from typing import Annotated

from helpers import CITIES

from cpbuild import Product, task

for name in CITIES:

    @task(id=name, kwargs={"city": name})  # tasks city_summary[Berlin], city_summary[Lisbon], ...
    def task_city_summary(
        city: str,
        clean: list[dict[str, object]],
        stats: dict[str, dict[str, float]],
        out: Annotated[Path, Product] = Path(f"build/cities/{name}.json"),
    ) -> None:
        summary = {
            "city": city,
            "stats": stats[city],
            "daily": [
                {"date": r["date"], "temp_c": r["temp_c"], "precip_mm": r["precip_mm"]}
                for r in clean
                if r["city"] == city
            ],
        }
        out.write_text(json.dumps(summary, indent=2) + "\n")
