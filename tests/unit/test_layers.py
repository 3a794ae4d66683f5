"""The package's layers, checked on every module's imports (parsed, not imported).

* `streamd.x` (the X side) and `streamd.kafka` (the Kafka side) never import each other:
  the daemon joins them, through records and the flow primitives below both.
* Only the development tooling (`streamd.dev`), the command line (`streamd.cli`) and the
  simulator itself import `streamd.simulator`: the daemon never carries it.
* The lower layers (errors, reasons, flow, records, config, dedup, ops) import no higher
  one (x, kafka, daemon, commands, cli, dev).

Every import counts: at the top, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "streamd"

LOWER = ("streamd.errors", "streamd.reasons", "streamd.endpoints", "streamd.flow",
         "streamd.records", "streamd.config", "streamd.dedup", "streamd.ops")
HIGHER = ("streamd.x", "streamd.kafka", "streamd.ha", "streamd.daemon", "streamd.commands",
          "streamd.cli", "streamd.dev")
SIMULATOR_USERS = ("streamd.dev", "streamd.cli", "streamd.simulator")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """streamd modules `module` imports. `from a import b` counts as a.b when that is a
    module, else as a."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if _within(name, ("streamd",))}


def _sides_meet(module: str, imported: str) -> bool:
    x, kafka = ("streamd.x",), ("streamd.kafka",)
    return ((_within(module, x) and _within(imported, kafka))
            or (_within(module, kafka) and _within(imported, x)))


def _carries_simulator(module: str, imported: str) -> bool:
    return _within(imported, ("streamd.simulator",)) and not _within(module, SIMULATOR_USERS)


def _looks_up(module: str, imported: str) -> bool:
    return _within(module, LOWER) and _within(imported, HIGHER)


# Each rule: does `module` importing `imported` break it?
RULES: dict[str, Callable[[str, str], bool]] = {
    "x_kafka": _sides_meet, "simulator": _carries_simulator, "lower": _looks_up,
}


def violations(rule: str) -> list[str]:
    broken = RULES[rule]
    return [f"{module} imports {imported}" for module in MODULES
            for imported in sorted(imports_of(module)) if broken(module, imported)]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layer_rule_holds(rule: str) -> None:
    assert violations(rule) == []


def test_the_parser_sees_every_kind_of_import() -> None:
    """The checks above are only as good as imports_of(): it finds the daemon's imports of
    both sides, a function-level import, and `from package import module`."""
    daemon = imports_of("streamd.daemon")
    assert {"streamd.x.stream", "streamd.kafka.publisher", "streamd.ops.sdnotify"} <= daemon
    assert "streamd.simulator" in imports_of("streamd.dev.demo")  # imported inside main()
    assert "streamd.ops.terminal" in imports_of("streamd.ops.logs")  # inside a function


def test_each_rule_catches_what_it_forbids() -> None:
    assert _sides_meet("streamd.x.stream", "streamd.kafka.spool")
    assert _sides_meet("streamd.kafka.publisher", "streamd.x")
    assert not _sides_meet("streamd.x.stream", "streamd.records")
    assert _carries_simulator("streamd.daemon", "streamd.simulator.app")
    assert not _carries_simulator("streamd.dev.demo", "streamd.simulator")
    assert _looks_up("streamd.config", "streamd.x.reconnect")
    assert _looks_up("streamd.ops.health", "streamd.daemon")
    assert not _looks_up("streamd.daemon", "streamd.ops.health")
