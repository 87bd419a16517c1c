"""The one OpenAI-compatible client (teacher, judge, item descriptions): cache, retries, budget, usage log."""

from convrec.llm.client import Answer, LLMClient, LLMConfig, Usage

__all__ = ["Answer", "LLMClient", "LLMConfig", "Usage"]
