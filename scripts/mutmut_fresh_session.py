"""A pytest plugin for mutation runs (scripts/mutation.sh): each test session imports the
test modules and conftest afresh.

mutmut runs pytest several times in one process (and forks each mutant's run from it).
Some tests import helpers from conftest by name; a second session would load a new
conftest while those test modules, cached from the first, still hold the old one's
objects, and every such test would fail: mutmut would count that as a kill.
"""

from __future__ import annotations

import sys
from typing import Any


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    for name in [n for n in sys.modules if n == "conftest" or n.startswith("test_")]:
        del sys.modules[name]
