"""LoRA variants: one module each, found through :mod:`studio.variants.registry`.

See :mod:`studio.variants.base` for the interface and how to add a variant.
Importing this package is cheap: variant modules (and torch/peft) load on first use.
"""

from studio.variants.base import (
    BuildContext,
    ExportContext,
    ExportReport,
    OptimConfig,
    Optimization,
    Paper,
    Variant,
    VariantParams,
    default_optimization,
    lr_lambda,
    module_key,
)
from studio.variants.registry import (
    create_variant,
    get_variant,
    list_variants,
    variant_catalog,
    variant_names,
)

__all__ = [
    "BuildContext",
    "ExportContext",
    "ExportReport",
    "OptimConfig",
    "Optimization",
    "Paper",
    "Variant",
    "VariantParams",
    "create_variant",
    "default_optimization",
    "get_variant",
    "list_variants",
    "lr_lambda",
    "module_key",
    "variant_catalog",
    "variant_names",
]
