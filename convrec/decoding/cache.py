"""The KV caches the project fills itself (the constrained loop, rollouts, prefix-shared scoring)."""

from __future__ import annotations

import inspect

from convrec.decoding.head import unwrap


def cache_kwarg(model) -> str:
    """A model's name for its past cache: transformers 5.2x renamed ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def new_cache(model):
    """An empty KV cache laid out from the model's config (Gemma's sliding-window layers), as `generate`
    builds its own: every cache the project fills itself starts here."""
    from transformers import DynamicCache

    return DynamicCache(config=unwrap(model).config)
