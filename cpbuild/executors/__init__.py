"""Built-in executors: ``inline`` (in the main thread; pdb works) and ``thread``."""
