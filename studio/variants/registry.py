"""The variant registry: one line per variant module, imported on first use.

Adding a variant is one file ``studio/variants/<module>.py`` that ends with
``VARIANT = MyVariant`` (or ``VARIANTS = [A, B]`` for a family sharing code) and
one entry in ``VARIANT_MODULES``. The UI dropdown, the API schema, the docs table
and the test matrix are all built from :func:`list_variants`.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from studio.errors import NotFoundError, ValidationFailed
from studio.variants.base import Variant

# One line per variant module (module name under studio.variants). Keep PEFT-provided first.
VARIANT_MODULES: tuple[str, ...] = (
    "lora",
    "rslora",
    "dora",
    "pissa",
    "olora",
    "loraplus",
    "adalora",
    "lora_ga",
    "eva",
    "miss",
    "lora_xs",
    "lora_sb",
    "slora",
    "nlora",
    "inttune",
    "dylora",
    "ffa_lora",
    "allora",
    "sora",
    "increlora",
    "s2_lora",
    "loraprune",
    # research variants (issue 4): one line each, inserted above this marker
)


@lru_cache(maxsize=1)
def _load() -> dict[str, type[Variant]]:
    found: dict[str, type[Variant]] = {}
    for module_name in VARIANT_MODULES:
        module = importlib.import_module(f"studio.variants.{module_name}")
        classes = getattr(module, "VARIANTS", None) or [module.VARIANT]
        for cls in classes:
            if cls.name in found:
                raise RuntimeError(f"variant name {cls.name!r} is registered twice ({module_name})")
            found[cls.name] = cls
    return found


def list_variants() -> list[type[Variant]]:
    """Every registered variant class, in registration order."""
    return list(_load().values())


def variant_names() -> list[str]:
    """Registry names, e.g. ["lora", "rslora", ...]."""
    return list(_load())


def get_variant(name: str) -> type[Variant]:
    """The variant class registered as ``name``."""
    try:
        return _load()[name]
    except KeyError:
        raise NotFoundError(f"unknown variant {name!r}; known variants: {', '.join(_load())}") from None


def create_variant(name: str, params: dict[str, Any] | None = None) -> Variant:
    """An instance of variant ``name`` with validated parameters (ValidationFailed names the field)."""
    from pydantic import ValidationError

    from studio.schema import format_validation_error

    cls = get_variant(name)
    try:
        parsed = cls.parse_params(params)
    except ValidationError as exc:
        raise ValidationFailed(f"variant {name}: {format_validation_error(exc)}") from None
    return cls(parsed)


def params_with_preset(name: str, preset: str | None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Variant ``name``'s parameters: the values of ``preset`` (if any), overridden by ``params``."""
    chosen = get_variant(name).preset(preset).values if preset else {}
    return {**chosen, **(params or {})}


def variant_catalog() -> list[dict[str, Any]]:
    """Name, texts, paper, flags, parameter JSON schema and presets of every variant (for the UI and docs)."""
    return [cls.info() for cls in list_variants()]
