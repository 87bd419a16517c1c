"""Student models: load any causal LM (hub id or folder), or build a tiny Llama locally."""
