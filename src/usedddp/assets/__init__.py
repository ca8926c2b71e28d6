"""Package data: a small demo corpus (see demo/README.md for its sources and licences)."""

from pathlib import Path

DEMO_ROOT = Path(__file__).parent / "demo"
