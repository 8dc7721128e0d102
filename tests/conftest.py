"""Shared by every suite (each runs in its own environment): tests/ on the import path, so the
pytest helpers in tests/densenet_testing.py import as `densenet_testing`, outside the library."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
