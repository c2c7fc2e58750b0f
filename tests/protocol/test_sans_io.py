"""protocol/ stays sans-I/O: no event loop, transport, database driver or project package imports.

Complements the import-linter contract with a check that needs no installed graph and
also catches ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocol"
FORBIDDEN = frozenset(
    {
        "asyncio", "socketio", "engineio", "aiohttp", "redis", "pymongo", "aiokafka", "kivy", "sqlite3",
        "socket", "storage", "hub", "clients", "edge",
    }
)  # fmt: skip


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every forbidden module ``source`` imports, as ``line: module``."""
    found: list[str] = []

    def check(name: str, line: int) -> None:
        if name.split(".", 1)[0] in FORBIDDEN:
            found.append(f"{filename}:{line}: {name}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                check(node.module, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            dynamic = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                check(arg.value, node.lineno)
    return found


def _protocol_files() -> list[Path]:
    return sorted(PROTOCOL_DIR.rglob("*.py"))


def test_protocol_has_modules() -> None:
    names = {p.name for p in _protocol_files()}
    assert {"__init__.py", "messages.py", "events.py", "errors.py", "ids.py"} <= names


@pytest.mark.parametrize("path", _protocol_files(), ids=lambda p: str(p.relative_to(PROTOCOL_DIR)))
def test_module_is_sans_io(path: Path) -> None:
    offenders = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert offenders == [], f"protocol/ must stay sans-I/O and project-free: {offenders}"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import asyncio.events as ev",
        "from socketio import AsyncServer",
        "from hub.domains import chat",
        "import storage",
        "import sqlite3, json",
        "def f():\n    import socket",
        "import importlib\nimportlib.import_module('redis.asyncio')",
        "__import__('pymongo')",
        "from kivy.app import App",
    ],
)
def test_checker_catches(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    ["import msgspec", "from protocol.errors import ErrorCode", "from . import ids", "import socketserver"],
)
def test_checker_allows(source: str) -> None:
    assert forbidden_imports(source) == []
