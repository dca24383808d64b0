"""MkDocs hook: `<!-- gen:NAME -->` in a page is replaced by the reference table NAME, generated
from the code when the site is built (docs/gen/reference.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from docs.gen.reference import GENERATED  # noqa: E402

MARKER = re.compile(r"^<!-- gen:([a-z-]+) -->$", re.M)


def on_page_markdown(markdown: str, **_: Any) -> str:
    def table(match: re.Match[str]) -> str:
        name = match[1]
        if name not in GENERATED:
            raise ValueError(f"unknown generated table {name!r} (known: {', '.join(GENERATED)})")
        return GENERATED[name]()

    return MARKER.sub(table, markdown)
