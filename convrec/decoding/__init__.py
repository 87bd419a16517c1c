"""Turning a model into lists: prompt encoding and generation (`generate`), the catalog trie and its
mask (`constrained`), the constrained sampling loop (`loop`), and finding catalog items in text
(`mentions`). Shared by rl's rollouts, `generate`, validation and `serve`."""
