"""Run the program: its output becomes a value, then a file."""

import subprocess
from pathlib import Path
from typing import Annotated

from cpbuild import Product


def task_run_hello(hello: Path = Path("build/hello")) -> str:
    # The binary is an input: relinking it to the same bytes does not rerun this task.
    result = subprocess.run([str(hello)], capture_output=True, text=True, check=True)
    return result.stdout


def task_write_output(
    run_hello: str,  # the value returned by task run_hello
    out: Annotated[Path, Product] = Path("build/output.txt"),
) -> None:
    out.write_text(run_hello)
