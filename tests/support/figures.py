"""Measured figures of the reliability suites, collected in one JSON file for docs/reliability.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Figures:
    """Measured numbers of the suites, written to a JSON file (and printed) for docs/reliability.md."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.write_text("{}")

    def record(self, name: str, **values: Any) -> None:
        data = json.loads(self.path.read_text())
        data[name] = values
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True))
        print(f"FIGURE {name}: {json.dumps(values, sort_keys=True)}")
