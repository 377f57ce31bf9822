"""Per-family additions to the reference modules (losses, label generation, weight loaders, export wrappers), and
each family's INT8 recipe: ``recipe_for(family)``.

Recipes are imported lazily: ``import vkt.models`` loads no family module.
"""

from __future__ import annotations

import importlib
from typing import Any

# family -> "module:class" of its INT8 recipe (vkt.models.recipe.Recipe)
RECIPES = {
    "textdet": "vkt.models.textdet.int8:TextdetRecipe",
    "detr": "vkt.models.detr.int8:DetrRecipe",
    "sd": "vkt.models.sd.int8:SdRecipe",
    "generic": "vkt.models.generic:GenericRecipe",
}


def recipe_for(family: str) -> Any:
    """The INT8 recipe of a bundle family ("textdet", "detr", "sd", "generic"), with its defaults."""
    from vkt.errors import InputError

    if family not in RECIPES:
        raise InputError(f"no INT8 recipe for family {family!r}; vkt knows {', '.join(RECIPES)}")
    module, name = RECIPES[family].split(":")
    return getattr(importlib.import_module(module), name)()


__all__ = ["RECIPES", "recipe_for"]
