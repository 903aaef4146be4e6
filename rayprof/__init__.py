"""rayprof: profile PyTorch models on video streams, one stream per Ray actor."""

__version__ = "0.1.0"

_LAZY = {"open_dataset": "query", "Dataset": "query"}  # imported on first use: `import rayprof` stays light


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
