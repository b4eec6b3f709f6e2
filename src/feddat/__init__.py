"""feddat: Federated Dual-Adapter Teacher (arXiv 2308.12305) and its baselines.

The Python API (docs/guide/using-a-model.md, 'Python API'): `Config`, `run`, `resume`, `compare_methods`, `load_model`,
`export`, `lora_base`, `export_head`, `report`, `RunResult`. They are imported on first use, so `import feddat` stays
light (no torch until something runs).
"""

__version__ = "0.1.0"

_API = ("Config", "RunResult", "run", "resume", "compare_methods", "load_model", "export", "lora_base", "export_head", "report", "read_run")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name == "Config":
        from feddat.config import Config

        return Config
    if name in _API:
        from feddat import api

        return getattr(api, name)
    raise AttributeError(f"module 'feddat' has no attribute '{name}'")
