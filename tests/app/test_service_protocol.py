"""app.py and what serves it: what app.py uses on its engine is declared (``lora_engine.service``), and both
implementations, ``Engine`` and Ray Serve's ``ClusterClient``, have every declared member with the same signature.

So a new call in app.py cannot silently break ``--ray``: it fails here until it is declared, and then until
``ClusterClient`` has it too.
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from lora_engine import Engine, EngineConfig, ImageService, InlineImageService
from lora_engine.serving.cluster import ClusterClient

APP = Path(__file__).resolve().parents[2] / "app.py"
IMPLEMENTATIONS = (Engine, ClusterClient)


def service_attributes(source: str, names: frozenset[str] = frozenset({"engine"})) -> dict[str, list[int]]:
    """Every attribute read on the service object in ``source``, with the lines it is read on.

    The service object is any variable or parameter in ``names``, and whatever is assigned from one of those
    (``self._engine = engine``), followed to a fixed point.
    """
    tree = ast.parse(source)
    aliases = {ast.dump(ast.Name(id=n, ctx=ast.Load())) for n in names}

    def loaded(node: ast.AST) -> str:
        # Compare expressions whatever their context (the assignment target is a Store, the use a Load).
        return ast.dump(node).replace("ctx=Store()", "ctx=Load()")

    while True:
        found = set(aliases)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and loaded(node.value) in aliases:
                found.update(loaded(t) for t in node.targets)
        if found == aliases:
            break
        aliases = found
    uses: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and loaded(node.value) in aliases:
            uses.setdefault(node.attr, []).append(node.lineno)
    return uses


def protocol_members(protocol: type) -> dict[str, object]:
    """The members a Protocol declares (its own and its protocol bases'): data members map to their type, methods
    to the function."""
    members: dict[str, object] = {}
    for cls in reversed(protocol.__mro__):
        if cls is typing.Protocol or cls is typing.Generic or not getattr(cls, "_is_protocol", False):
            continue
        members.update(typing.get_type_hints(cls) if "__annotations__" in vars(cls) else {})
        members.update({k: v for k, v in vars(cls).items() if inspect.isfunction(v) and not k.startswith("_")})
    return members


def test_the_attribute_walker_sees_uses_through_aliases():
    source = (
        "def f(engine):\n"
        "    engine.submit(1)\n"
        "class W:\n"
        "    def __init__(self, engine):\n"
        "        self._engine = engine\n"
        "    def p(self):\n"
        "        return self._engine.position(2)\n"
        "other.close()\n"
    )
    assert service_attributes(source) == {"submit": [2], "position": [7]}


def test_every_attribute_app_py_uses_on_its_engine_is_declared():
    uses = service_attributes(APP.read_text(encoding="utf-8"))
    base = protocol_members(ImageService)
    inline = protocol_members(InlineImageService)
    assert {"submit", "info"} <= uses.keys()  # the walker found app.py's engine at all
    undeclared = {name: lines for name, lines in uses.items() if name not in inline}
    assert not undeclared, (
        f"app.py uses these on its engine, but lora_engine.service does not declare them: {undeclared}"
    )
    # Beyond ImageService only what InlineImageService adds, and app.py checks for it before using it.
    assert uses.keys() - base.keys() <= inline.keys() - base.keys()
    if uses.keys() - base.keys():
        assert "isinstance(engine, InlineImageService)" in APP.read_text(encoding="utf-8")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_each_implementation_has_every_member_with_the_same_signature(implementation):
    declared = protocol_members(InlineImageService if implementation is Engine else ImageService)
    hints = typing.get_type_hints(implementation)
    for name, member in declared.items():
        if inspect.isfunction(member):
            ours = getattr(implementation, name, None)
            assert inspect.isfunction(ours), f"{implementation.__name__}.{name} is missing"
            assert inspect.signature(ours, eval_str=True) == inspect.signature(member, eval_str=True), name
        else:
            assert name in hints, f"{implementation.__name__} does not declare `{name}: {member.__name__}`"
            assert issubclass(hints[name], member), (name, hints[name], member)


def test_cluster_client_offers_no_inline_generation():
    assert not hasattr(ClusterClient, "generate_inline")


class _RemoteService:
    """A pure stand-in for a service whose pipeline is elsewhere (ClusterClient needs a running Ray)."""

    info = limits = config = None

    def submit(self, request, *, on_progress=None): ...
    def check_adapter(self, adapter_id): ...
    def position(self, future): ...
    def estimate_s(self, future): ...
    def metrics_text(self): ...
    def close(self, timeout=10.0): ...


def test_a_real_engine_is_an_inline_image_service_and_only_it_takes_a_gpu_call(demo_assets, tmp_path):
    from app import _inline_call

    engine = Engine.from_config(EngineConfig(demo_dir=str(demo_assets.root), hub_cache_dir=str(tmp_path)))
    try:
        assert isinstance(engine, ImageService) and isinstance(engine, InlineImageService)
        assert engine.metrics_text().startswith(b"# HELP")
        wrapped = []
        assert _inline_call(engine, lambda fn: wrapped.append(fn) or fn) == engine.generate_inline
        assert wrapped == [engine.generate_inline]
    finally:
        engine.close()
    remote = _RemoteService()
    assert isinstance(remote, ImageService) and not isinstance(remote, InlineImageService)
    assert _inline_call(remote, None) is None
    with pytest.raises(TypeError, match="_RemoteService"):
        _inline_call(remote, lambda fn: fn)
