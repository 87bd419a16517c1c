"""The closed sets of values some options take, declared once as `Literal` types so typer shows them as
choices and rejects anything else with one line (one name and one spelling per concept)."""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test"]
Size = Literal["small", "medium"]  # the synthetic world (data synth, demo)
ComputePrecision = Literal["auto", "fp32", "bf16"]  # training compute (autocast); weights stay fp32
WeightPrecision = Literal["fp32", "bf16", "fp16"]  # the weights' dtype in memory or on disk

WEIGHT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def weight_dtype(precision: str | None) -> str | None:
    """A --precision choice as the torch dtype name `load_model` takes (None: as saved)."""
    return None if precision is None else WEIGHT_DTYPES[precision]
