"""Compile each C file to an object file, then link them: make's pattern rule and link rule."""

import subprocess
from pathlib import Path
from typing import Annotated

from cpbuild import Product, task

SOURCES = ("main", "greet")
CFLAGS = ("-O2", "-Wall", "-Wextra")  # a constant: editing it recompiles every object

for stem in SOURCES:

    @task(id=stem)  # tasks compile[main] and compile[greet]
    def task_compile(
        source: Path = Path(f"src/{stem}.c"),  # inputs: the C file and the header it includes
        header: Path = Path("src/greet.h"),
        obj: Annotated[Path, Product] = Path(f"build/{stem}.o"),
    ) -> None:
        subprocess.run(["gcc", *CFLAGS, "-c", str(source), "-o", str(obj)], check=True)


def task_link(
    objects: tuple[Path, ...] = tuple(Path(f"build/{stem}.o") for stem in SOURCES),
    hello: Annotated[Path, Product] = Path("build/hello"),
) -> None:
    # The objects are products of the compile tasks, so linking waits for them.
    subprocess.run(["gcc", *map(str, objects), "-o", str(hello)], check=True)
