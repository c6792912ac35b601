"""Provider connections managed at run time over HTTP or Python (seed 003)."""

from .service import Connections, TestResult

__all__ = ["Connections", "TestResult"]
