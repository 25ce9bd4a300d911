"""Built-in storages: ``local`` (a content-addressed folder) and ``memory`` (one process)."""
