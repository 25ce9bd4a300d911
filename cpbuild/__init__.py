"""cpbuild: a make-like build tool for Python with pytest's ergonomics.

Only the declarations a task file needs are imported here; the engine is imported by the CLI.
"""

from cpbuild.api import Mark, Needs, Product, mark, task

__version__ = "0.1.0"

__all__ = ["Mark", "Needs", "Product", "__version__", "mark", "task"]
