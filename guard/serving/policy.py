"""What a verdict does to a response under each policy."""

from __future__ import annotations

from guard.protocol.errors import Blocked
from guard.protocol.types import Parameter, Verdict

ENFORCE, FLAG, SHADOW = "enforce", "flag", "shadow"
POLICIES = (ENFORCE, FLAG, SHADOW)  # the one list: model configs and the command line take it


def apply(policy: str, verdict: Verdict) -> dict[str, Parameter]:
    """The response parameters for this verdict, or Blocked when `enforce` refuses it.

    enforce: flagged requests are not forwarded; clean ones carry the verdict parameters.
    flag:    every request is served and carries the verdict parameters.
    shadow:  clients see only the model's outputs; verdicts go to logs and metrics alone.
    """
    if policy == SHADOW:
        return {}
    if policy == ENFORCE and verdict.flagged:
        raise Blocked(
            f"blocked by guard: verdict {verdict.verdict}, flagged by "
            f"{', '.join(verdict.flagged_by)}, score {verdict.score:.3f} (threshold 1.0)"
        )
    return verdict.parameters()
