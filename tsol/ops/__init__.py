"""Every op definition, one module per family. Importing this registers them all."""

import importlib

FAMILY_NAMES = ("elementwise", "reduction", "softmax", "normalization", "layout", "random",
                "linalg", "attention", "loss", "fused", "fused_reduction")

FAMILIES = tuple(importlib.import_module(f"tsol.ops.{name}") for name in FAMILY_NAMES)

__all__ = [name for family in FAMILIES for name in family.__all__]

globals().update({name: getattr(family, name) for family in FAMILIES for name in family.__all__})
