"""The tests marked ``pure`` pass where torch, diffusers, transformers and peft cannot be imported.

A module's tests are pure when it says ``pytestmark = pytest.mark.pure`` (the marker is registered in
``tests/conftest.py``; that is the one list). This runs all of them in a subprocess whose imports of those four
packages fail (``tests.support.without_torch``), as on a machine that never installed them, and checks that
every one of their tests passes there, none skipped, and that the blocking itself held.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.without_torch import BLOCK_CONFIRMED

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"

#: Test modules of the modules that must stay torch-free (house style: scheduler, request, cache bookkeeping,
#: settings, repo rules, the adapter store). Each must be marked pure.
MUST_BE_PURE = (
    "tests/test_scheduler.py",
    "tests/lora_engine/test_request.py",
    "tests/lora_engine/test_adapter_cache.py",
    "tests/lora_engine/test_settings.py",
    "tests/lora_engine/test_repo_rules.py",
    "tests/lora_engine/test_store.py",
)


def marked_pure(path: Path) -> bool:
    """Whether the module assigns ``pytestmark`` a ``pytest.mark.pure`` (alone or in a list), at its top level."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.pure" for mark in marks)
    return False


def pure_modules() -> list[str]:
    return sorted(str(p.relative_to(REPO_ROOT)) for p in TESTS.rglob("test_*.py") if marked_pure(p))


def test_the_torch_free_modules_have_their_tests_marked_pure():
    assert set(MUST_BE_PURE) <= set(pure_modules())


def test_marked_pure_is_read_from_the_module_top_level(tmp_path):
    cases = {
        "pytestmark = pytest.mark.pure\n": True,
        "pytestmark = [pytest.mark.slow, pytest.mark.pure]\n": True,
        "pytestmark = pytest.mark.slow\n": False,
        "def f():\n    pytestmark = pytest.mark.pure\n": False,
        "import pytest\n": False,
    }
    for source, expected in cases.items():
        module = tmp_path / "test_case.py"
        module.write_text(source)
        assert marked_pure(module) is expected, source


def test_every_pure_test_passes_with_torch_diffusers_transformers_and_peft_blocked(tmp_path):
    modules = pure_modules()
    report = tmp_path / "pure.xml"
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.without_torch", "-m", "pure", "-q", f"--junitxml={report}", *modules],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout[-6000:] + run.stderr[-6000:]
    assert BLOCK_CONFIRMED in run.stdout, output  # the blocking was in place and checked before pytest started
    assert run.returncode == 0, output

    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    # Every pure module ran there: none was left out by a marker filter or a collection problem.
    ran = {case.get("classname") for case in suite.iter("testcase")}
    for module in modules:
        dotted = module.removesuffix(".py").replace("/", ".")
        assert any(name == dotted or name.startswith(dotted + ".") for name in ran), (module, sorted(ran))


def test_the_blocking_refuses_torch(tmp_path):
    # The runner's own check, seen from outside: in such a subprocess, importing torch fails.
    probe = (
        "from tests.support.without_torch import block\n"
        "assert block() == []\n"
        "try:\n"
        "    import torch\n"
        "except ImportError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    print('imported', torch.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("refused: `torch` is blocked"), run.stdout
