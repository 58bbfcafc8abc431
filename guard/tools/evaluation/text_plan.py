"""A text plan's [[attacks]] entries, read and checked: each names a black-box attack on text
models (text_attacks.REGISTRY) with its parameters; word substitution names the neighbours table
its candidates come from (an .npz written by guard.detection.neighbours.save_neighbours), and
`labels_only = true` makes the attack decision-based (it sees only the label of each answer).

    [[attacks]]
    name = "word-substitution"
    params = { max_queries = 300, max_edits = 5, max_candidates = 10 }
    neighbours = "neighbours.npz"
    labels_only = false

A text plan that names no attack runs the four character attacks with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from guard.detection.neighbours import load_neighbours
from guard.protocol.settings import TableReader
from guard.tools.evaluation.text_attacks import REGISTRY, TextAttack, WordSubstitution, build_attack

DEFAULT_ATTACKS = ("swap", "insert", "delete", "homoglyph")


@dataclass(frozen=True)
class TextAttackSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    neighbours: Path | None = None
    labels_only: bool = False

    @property
    def key(self) -> str:
        """The row's key: the name, marked when decision-based, with any non-default parameters."""
        own = "".join(f"_{k}{v}" for k, v in sorted(self.params.items()))
        return f"{self.name}{'_labels' if self.labels_only else ''}{own}"

    @cached_property
    def table(self) -> dict[str, list[str]]:
        return {} if self.neighbours is None else load_neighbours(self.neighbours)

    def build(self) -> TextAttack:
        table = self.table
        return build_attack(self.name, self.params, (lambda word: table.get(word.lower(), [])) if table else None)


def read_text_attack(r: TableReader) -> TextAttackSpec:
    r.unknown(("name", "params", "neighbours", "labels_only"))
    name = r.get("name", str, expected="an attack name")
    if name not in REGISTRY:
        raise r.fail("name", f"an attack on text models ({', '.join(REGISTRY)})", name)
    params = r.get("params", dict, {}, "a table of the attack's parameters")
    neighbours = None
    if REGISTRY[name] is WordSubstitution:
        neighbours = r.file("neighbours", what="a neighbours table (.npz, guard.detection.neighbours)", anywhere=True)
        try:
            load_neighbours(neighbours)
        except (OSError, ValueError, KeyError) as exc:
            raise r.fail("neighbours", f"a neighbours table ({exc})", str(neighbours)) from None
    elif "neighbours" in r.table:
        raise r.fail("neighbours", "no neighbours for a character attack (only word-substitution takes them)")
    spec = TextAttackSpec(name, params, neighbours, r.get("labels_only", bool, False))
    try:
        spec.build()
    except (TypeError, ValueError) as exc:
        raise r.fail("params", "parameters the attack declares", str(exc)) from None
    return spec


def read_text_attacks(reader: TableReader) -> tuple[TextAttackSpec, ...]:
    specs = [read_text_attack(r) for r in reader.tables("attacks")] or [TextAttackSpec(n) for n in DEFAULT_ATTACKS]
    keys = [s.key for s in specs]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate is not None:
        raise reader.fail("attacks", "attacks whose keys differ (another name, parameter or labels_only)", duplicate)
    return tuple(specs)
