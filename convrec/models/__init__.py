"""Student models: load any causal LM (hub id or folder), or build a tiny Llama locally."""

import os

import torch

# transformers imports DeepSpeed's integration whenever deepspeed is installed, and DeepSpeed then
# warns on every CPU-only run that it fell back to its CPU accelerator: name it up front instead.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
