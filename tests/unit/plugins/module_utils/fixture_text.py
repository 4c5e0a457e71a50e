"""The text of a file in this folder's fixtures/ (canned nvidia-smi, /metrics and adapter outputs)."""
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")
