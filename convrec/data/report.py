"""What an importer or generator did: counts written and rows rejected, with reasons."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ImportReport:
    source: str
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"catalog items": 7404, "train samples": ...}
    rejected: Counter = field(default_factory=Counter)  # reason -> rows
    notes: list[str] = field(default_factory=list)  # free-form findings (e.g. signal strength)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def as_dict(self) -> dict:
        return {"source": self.source, "counts": self.counts, "rejected": dict(self.rejected), "notes": self.notes}
