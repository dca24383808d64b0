"""worker.contract: what producers and workers share: job models, keys, records, settings, routes, the result store."""

__all__ = [
    "bounds",
    "connections",
    "keys",
    "models",
    "pricing",
    "records",
    "routes",
    "serde",
    "setting_types",
    "settings",
    "store",
    "strict",
]
