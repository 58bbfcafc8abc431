"""Where the examples' shipped files are, and where their outputs go.

The demo repository, the zoo and the training artifacts are package data: they travel with the
package, installed or not. Outputs (`build/`, `reports/`) go under the checkout when the package
runs from one, so `make` targets and tests find what a recipe built; an installed package writes
them under the working directory instead.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPOSITORY = PACKAGE / "repository"
"""The digits demo repository that `make serve` serves."""
ZOO = PACKAGE / "zoo"
ARTIFACTS = PACKAGE / "artifacts"
DATA = PACKAGE / "data"
"""The digits splits as .npz files (guard_examples.digits_data writes and checks them)."""


def _workspace() -> Path:
    checkout = PACKAGE.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "guard").is_dir():
        return checkout
    return Path.cwd()


WORKSPACE = _workspace()
"""The checkout's root, or the working directory where the package is installed."""
