"""Where the shared reference material lives, when this checkout has it beside it."""
from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference"
SMEV_REFERENCE = SHARED / "smev3" / "1.1"
