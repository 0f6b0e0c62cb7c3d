"""Run pytest in this process with torch, diffusers, transformers and peft made unimportable.

What it is for: proving that the tests marked ``pure`` (``pytestmark = pytest.mark.pure`` in a test module; the
marker is registered in ``tests/conftest.py``) need none of the heavy libraries, as on a machine that has not
installed them. ``tests/test_pure_tests_run_without_torch.py`` runs it in a subprocess; by hand:

    .venv/bin/python -m tests.support.without_torch -m pure tests/test_scheduler.py

Every argument goes to pytest. Before pytest starts, a finder at the front of ``sys.meta_path`` refuses the
blocked packages (and their submodules) with ``ImportError``, as if they were not installed; the runner then checks
that importing each of them really fails (exit status 3 if one imports, or was imported before the finder).

What it is not for: choosing which tests are pure (the marker does) or running anything else without torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

#: The packages a pure test must not need (their top-level names).
BLOCKED = ("torch", "diffusers", "transformers", "peft")
#: Printed once the blocking is checked, so that a caller can tell the check ran.
BLOCK_CONFIRMED = "without_torch: importing torch, diffusers, transformers and peft fails here"
#: The exit status when the blocking itself does not hold (pytest uses 0-5).
BLOCK_FAILED = 3


class BlockedImports(importlib.abc.MetaPathFinder):
    """Refuses to find the ``BLOCKED`` packages and their submodules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED:
            raise ImportError(f"`{fullname}` is blocked: a test marked pure must not import it", name=fullname)
        return None  # everything else: the usual finders


def block() -> list[str]:
    """Install the finder; return what is wrong with the blocking (empty when every blocked import fails)."""
    problems = [f"`{name}` was already imported" for name in sorted(sys.modules) if name.partition(".")[0] in BLOCKED]
    sys.meta_path.insert(0, BlockedImports())
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        problems.append(f"`{name}` still imports")
    return problems


def main(argv: list[str]) -> int:
    problems = block()
    if problems:
        print("without_torch: the blocking does not hold: " + "; ".join(problems), file=sys.stderr)
        return BLOCK_FAILED
    print(BLOCK_CONFIRMED, flush=True)
    import pytest

    return int(pytest.main(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
