"""Which prompt ids the code uses, read from its source (for the catalogue coverage test).

Flows pass prompt ids as string literals to a :class:`~ivr.prompts.Voice`'s
``play``/``ask``/``path`` (``voice.play(call, "welcome")``, ``s.voice.ask(...)``).
:func:`scan_source` finds every such call; a call whose id is not a literal is reported
too, because it cannot be checked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from . import PROMPT_ID_FUNCTIONS


@dataclass(frozen=True)
class PromptUse:
    file: str
    line: int
    prompt_id: str | None  # None: not a literal


def scan_source(source: str, file: str = "<source>") -> list[PromptUse]:
    tree = ast.parse(source, file)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in (
            "prompts", "api"
        ):
            imported.update(a.asname or a.name for a in node.names
                            if a.name in PROMPT_ID_FUNCTIONS)
    uses: list[PromptUse] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_api = (
            isinstance(func, ast.Attribute)
            and func.attr in PROMPT_ID_FUNCTIONS
            and _is_voice(func.value)
        ) or (isinstance(func, ast.Name) and func.id in imported)
        if not is_api:
            continue
        arg: ast.expr | None = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "prompt_id":
                arg = kw.value
        literal = None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            literal = arg.value
        uses.append(PromptUse(file, node.lineno, literal))
    return sorted(uses, key=lambda u: u.line)


def _is_voice(node: ast.expr) -> bool:
    """``voice``, ``prompts`` or ``<anything>.voice`` (``s.voice``, ``app.voice``)."""
    if isinstance(node, ast.Name):
        return node.id in ("voice", "prompts")
    return isinstance(node, ast.Attribute) and node.attr == "voice"


def scan_files(paths: list[Path]) -> list[PromptUse]:
    uses: list[PromptUse] = []
    for path in paths:
        uses += scan_source(path.read_text(), str(path))
    return uses


def flow_files() -> list[Path]:
    """The call flows: ivr/flows/*.py."""
    return sorted((Path(__file__).resolve().parents[1] / "flows").glob("*.py"))
