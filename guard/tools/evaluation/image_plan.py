"""An image plan's [[attacks]] entries (those with a `rule`), read and checked: each names an attack
on image models (image_attacks.REGISTRY), a success rule (rules.REGISTRY), and one or several
L-inf budgets of at least one 8-bit level; a bad value is a ConfigError naming its key."""

from __future__ import annotations

from guard.protocol.settings import TableReader
from guard.tools.evaluation.image_attacks import PARAMS as IMAGE_PARAMS
from guard.tools.evaluation.image_attacks import REGISTRY as IMAGE_ATTACKS
from guard.tools.evaluation.image_attacks import RuleAttack
from guard.tools.evaluation.image_models import LEVELS, ImageModel
from guard.tools.evaluation.rules import REGISTRY as RULES


def _budgets(r: TableReader) -> list[float]:
    """An image attack's `eps`: one budget or a list, each in [1/255, 1] (frames carry 8-bit pixels)."""
    value = r.get("eps", object, expected="an L-inf budget or a list of them")
    items = value if isinstance(value, list) else [value]
    values = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if (
        not values
        or len(values) != len(items)
        or not all(1.0 / LEVELS - 1e-9 <= v <= 1.0 for v in values)
        or len(set(values)) != len(values)
    ):
        raise r.fail("eps", f"distinct L-inf budgets in [1/{LEVELS}, 1] (frames carry 8-bit pixels)", value)
    return values


def _image_params(r: TableReader) -> dict[str, object]:
    """An image attack's `params`: rule_pgd's keyword arguments, each checked."""
    params = r.sub("params")
    params.unknown(tuple(IMAGE_PARAMS))
    found: dict[str, object] = {}
    if "steps" in params.table:
        found["steps"] = params.positive("steps", ...)
    if "alpha" in params.table:
        found["alpha"] = params.positive_float("alpha", ..., "a positive step size")
    if "random_start" in params.table:
        found["random_start"] = params.get("random_start", bool)
    return found


def read_rule_attacks(r: TableReader) -> list[RuleAttack]:
    """An [[attacks]] entry with a `rule`: an attack on image models, one per budget."""
    r.unknown(("name", "rule", "class", "iou", "eps", "params", "batch_size"))
    name = r.get("name", str, expected="an attack name")
    if name not in IMAGE_ATTACKS:
        raise r.fail("name", f"an attack on image models ({', '.join(IMAGE_ATTACKS)})", name)
    rule = r.choice("rule", tuple(RULES))
    target = r.get("class", int, 0, "a class index")
    if target < 0:
        raise r.fail("class", "a class index >= 0", target)
    iou = r.get("iou", float, 0.5)
    if not 0.0 < iou <= 1.0:
        raise r.fail("iou", "an IoU in (0, 1]", iou)
    params, batch = _image_params(r), r.positive("batch_size", 16)
    return [RuleAttack(name, rule, eps, params, target, iou, batch) for eps in _budgets(r)]


def check_rule_attacks(reader: TableReader, attacks: list[tuple[int, RuleAttack]], images: list[ImageModel]) -> None:
    """Every image attack judges some image model's output kind, with a class that model has."""
    for i, attack in attacks:
        fits = [m for m in images if m.output_kind == attack.output_kind]
        if not fits:
            raise reader.fail(
                f"attacks[{i}].rule",
                f"a rule for an output kind of the plan's image models ({sorted({m.output_kind for m in images})})",
                attack.rule,
            )
        fewest = min(m.classes for m in fits)
        if attack.target_class >= fewest:
            raise reader.fail(
                f"attacks[{i}].class", f"a class index below {fewest} (the models' classes)", attack.target_class
            )
