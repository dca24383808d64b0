"""producers.console.pages: the operator console: its pages and actions, sign-in and sessions, what the pages read."""

__all__ = [
    "auth",
    "pages",
    "views",
]
