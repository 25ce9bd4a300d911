"""Write build/report.md from the `stats` value and a template file."""

from pathlib import Path
from string import Template
from typing import Annotated

from helpers import markdown_table

from cpbuild import Product


def task_report(
    stats: dict[str, dict[str, float]],  # another task's value
    template: Path = Path("report.tmpl"),  # an input file
    out: Annotated[Path, Product] = Path("build/report.md"),  # a product
) -> None:
    warmest = max(stats, key=lambda city: stats[city]["mean"])
    text = Template(template.read_text(encoding="utf-8")).substitute(
        n_cities=len(stats),
        n_days=sum(s["days"] for s in stats.values()),
        warmest=warmest,
        table=markdown_table(stats),
    )
    out.write_text(text, encoding="utf-8")
