"""The one prompt builder: conversation -> chat messages asking for N `Title (Year)` lines.

sft, rl, generate, eval and serve all call `build_messages`, so a model is always asked the same
way it was trained. As in the paper, the whole request is one user message: the conversation
rendered as `User:` / `Assistant:` lines, then the instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

INSTRUCTION = (
    "Pretend you are a movie recommender system. Based on the conversation above, recommend {n} "
    "movies the user would like. Reply with exactly {n} lines, one movie per line in the form "
    "Title (Year), ranked from best to worst, and nothing else."
)
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def render_conversation(messages: Sequence[dict]) -> str:
    return "\n".join(
        f"{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content'].strip()}"
        for m in messages
        if m.get("content") and m["content"].strip()
    )


def instruction(n: int = 20) -> str:
    return INSTRUCTION.format(n=n)


def build_messages(messages: Sequence[dict], n: int = 20) -> list[dict]:
    """Chat messages for the student (or a teacher) given a sample's conversation."""
    return [{"role": "user", "content": f"{render_conversation(messages)}\n\n{instruction(n)}"}]


LIST_REASK = (
    "Your answer has no list I can read. Reply with exactly {n} lines, one movie per line in the form "
    "Title (Year), ranked from best to worst, and nothing else."
)


def reask_messages(messages: Sequence[dict], answer: str, n: int = 20) -> list[dict]:
    """A teacher's request asked again after an answer with no list: the answer, then the format once more."""
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": LIST_REASK.format(n=n)}]
