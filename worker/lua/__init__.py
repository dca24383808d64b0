"""worker.lua: every Lua script, a `.lua` file, and the registry that loads and joins them."""

__all__ = [
    "registry",
]
