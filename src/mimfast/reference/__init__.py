"""Explicit PyTorch reference of the model (docs/model.md §7), the ground truth for the fast backends."""

from .explicit import MAX_ENUMERATED_MASKS, ExplicitModel

__all__ = ["MAX_ENUMERATED_MASKS", "ExplicitModel"]
