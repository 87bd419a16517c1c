"""Catalog-constrained decoding: every generated line is a catalog item, none twice, none seen.

A prefix trie holds each catalog line's token ids exactly as a model writes them in a list:
``Title (Year)`` followed either by the newline tokens (another line follows) or by EOS (the
list ends), so a tokenizer that merges ")" and "\\n" into one token is handled like one that keeps
them apart. `CatalogLogitsProcessor` walks the trie with each generated token and masks every
token that leaves it. EOS is reachable only right after a complete line, and only for the k-th
line (or when no allowed item is left); the newline is reachable only before it.

Per row the state is the current node, the number of finished lines, and, for blocked items
(already listed or excluded as seen), counts per trie node plus the set of "dead" child tokens
whose subtree holds blocked items only. The allowed child tokens of every node are one
precomputed tensor (cached on first use), so a step costs one dict lookup and one
``index_fill_`` per row, whatever the catalog size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from convrec.catalog import Catalog
from convrec.errors import ConvrecError
from convrec.models.load import turn_end_id

_NEXT, _END = 1, 2  # how a leaf edge finishes a line: another line follows / the list ends


class CatalogTrie:
    """Token-level prefix trie over a catalog's distinct `Title (Year)` lines."""

    def __init__(self, tokenizer, labels: Sequence[str]) -> None:
        if tokenizer.eos_token_id is None:
            raise ConvrecError("the tokenizer has no EOS token: constrained decoding needs one to end a list")
        # a list ends with the token the chat template ends a reply with (what SFT taught the model)
        self.eos = turn_end_id(tokenizer)
        self.vocab_size = len(tokenizer)
        self.labels: list[str] = []
        index: dict[str, int] = {}
        for label in labels:
            index.setdefault(label, len(index))
            if len(self.labels) < len(index):
                self.labels.append(label)
        self.item_of_label = index
        self.children: list[dict[int, int]] = [{}]
        self.subtree: list[int] = [0]  # distinct items below each node
        self.leaf: dict[int, tuple[int, int]] = {}  # leaf node -> (item, _NEXT | _END)
        self.item_edges: list[list[tuple[int, int, int]]] = []  # item -> its (parent, token, node) edges
        nl = tokenizer([f"{lb}\n" for lb in self.labels], add_special_tokens=False)["input_ids"]
        plain = tokenizer(self.labels, add_special_tokens=False)["input_ids"]
        self.max_line_tokens = max(len(x) for x in nl) if nl else 0
        for item, (next_ids, end_ids) in enumerate(zip(nl, plain, strict=True)):
            edges: dict[tuple[int, int], int] = {}
            for path, kind in ((next_ids, _NEXT), ([*end_ids, self.eos], _END)):
                node = 0
                for tok in path:
                    child = self.children[node].get(tok)
                    if child is None:
                        child = len(self.children)
                        self.children[node][tok] = child
                        self.children.append({})
                        self.subtree.append(0)
                    edges[(node, tok)] = child
                    node = child
                self.leaf[node] = (item, kind)
            for child in edges.values():
                self.subtree[child] += 1
            self.item_edges.append([(p, t, c) for (p, t), c in edges.items()])
        self.subtree[0] = len(self.labels)
        self._allowed: dict[tuple[int, bool, torch.device], torch.Tensor] = {}
        self.children.append({})  # node -1 (the last one): no children, so only EOS is allowed there

    def __len__(self) -> int:
        return len(self.labels)

    def allowed(self, node: int, last: bool, device: torch.device) -> torch.Tensor:
        """Child tokens of ``node``: for the list's last line only EOS ends it, otherwise only a newline."""
        key = (node, last, device)
        hit = self._allowed.get(key)
        if hit is None:
            unwanted = _NEXT if last else _END
            toks = [t for t, c in self.children[node].items() if self.leaf.get(c, (0, 0))[1] != unwanted]
            hit = self._allowed[key] = torch.tensor(toks or [self.eos], dtype=torch.long, device=device)
        return hit

    def eos_only(self, device: torch.device) -> torch.Tensor:
        return self.allowed(-1, True, device)


@dataclass(frozen=True)
class RowConstraint:
    """What one row of a batch may write: exactly ``k`` lines (fewer only if the catalog runs out)."""

    k: int
    exclude: frozenset[int] = frozenset()  # trie items never to write (seen in the conversation)


class RowState:
    """One row's walk through the trie: what it has written and what it may write next."""

    __slots__ = ("trie", "k", "node", "items", "blocked", "dead", "n_blocked", "done")

    def __init__(self, trie: CatalogTrie, spec: RowConstraint) -> None:
        self.trie, self.k = trie, max(1, spec.k)
        self.node = 0
        self.items: list[int] = []
        self.blocked: dict[int, int] = {}
        self.dead: dict[int, set[int]] = {}
        self.n_blocked = 0
        self.done = False
        for item in spec.exclude:
            self._block(item)

    def _block(self, item: int) -> None:
        self.n_blocked += 1
        subtree = self.trie.subtree
        for parent, tok, node in self.trie.item_edges[item]:
            b = self.blocked[node] = self.blocked.get(node, 0) + 1
            if b == subtree[node]:
                self.dead.setdefault(parent, set()).add(tok)

    def advance(self, tok: int) -> None:
        if self.done:
            return
        child = self.trie.children[self.node].get(tok)
        if child is None:  # EOS at the root (list complete), or a forced token the mask did not allow
            self.done = True
            return
        leaf = self.trie.leaf.get(child)
        if leaf is None:
            self.node = child
            return
        item, kind = leaf
        self.items.append(item)
        self._block(item)
        self.node = 0
        self.done = kind == _END

    def allowed(self, device: torch.device) -> tuple[torch.Tensor, set[int] | None]:
        """The trie's child tokens here and the "dead" ones among them (to mask again)."""
        trie = self.trie
        left = len(trie) - self.n_blocked  # items still allowed, the one being written included
        if self.done or (self.node == 0 and (len(self.items) >= self.k or left <= 0)):
            return trie.eos_only(device), None
        last = len(self.items) + 1 >= self.k or left <= 1
        return trie.allowed(self.node, last, device), self.dead.get(self.node)

    def next_ids(self, device: torch.device) -> torch.Tensor:
        """The token ids this row may write next: the trie's children here minus the dead ones."""
        allowed, dead = self.allowed(device)
        if not dead:
            return allowed
        keep = allowed[~torch.isin(allowed, torch.tensor(sorted(dead), device=device))]
        # cannot be empty on a consistent trie; never leave a row without a token (no pass over the vocabulary)
        return keep if len(keep) else self.trie.eos_only(device)

    @property
    def at_line_start(self) -> bool:
        return self.done or self.node == 0


def mask_scores(scores: torch.Tensor, allowed: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Scores (B × V) with every token outside its row's ``allowed`` ids at −inf (None: row unmasked)."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    for r, ids in enumerate(allowed):
        if ids is None:
            mask[r] = False
        else:
            mask[r].index_fill_(0, ids, False)
    return scores.masked_fill(mask, float("-inf"))


class CatalogLogitsProcessor(LogitsProcessor):
    """Masks each row's scores to its trie walk; rows whose constraint is None are left alone.

    One instance serves one `generate` call (it keeps per-row state). After the call,
    `finish(sequences)` feeds it the last generated token, which `generate` never shows a
    processor, so `items` and `complete` describe the whole output.
    """

    def __init__(self, trie: CatalogTrie, constraints: Sequence[RowConstraint | None]) -> None:
        self.trie = trie
        self.rows = [RowState(trie, c) if c is not None else None for c in constraints]
        self._seen_len: int | None = None

    def _advance(self, input_ids: torch.Tensor) -> None:
        if self._seen_len is not None and input_ids.shape[1] > self._seen_len:
            for state, tok in zip(self.rows, input_ids[:, self._seen_len].tolist(), strict=True):
                if state is not None:
                    state.advance(tok)
        self._seen_len = input_ids.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._advance(input_ids)
        return mask_scores(scores, [s.next_ids(scores.device) if s is not None else None for s in self.rows])

    def finish(self, sequences: torch.Tensor) -> None:
        self._advance(sequences)

    def items(self, row: int) -> list[int]:
        state = self.rows[row]
        return list(state.items) if state is not None else []

    def complete(self, row: int) -> bool:
        """Whether the row stopped between lines (not cut mid-line by the token budget)."""
        state = self.rows[row]
        return state is None or state.at_line_start


class CatalogConstraints:
    """A catalog's trie plus the maps between catalog rows and trie items; built once per model."""

    def __init__(self, tokenizer, catalog: Catalog) -> None:
        self.catalog = catalog
        labels = [catalog.label(r) for r in range(len(catalog))]
        self.trie = CatalogTrie(tokenizer, labels)
        self.item_of_row = [self.trie.item_of_label[lb] for lb in labels]
        # the first catalog row with each line stands for it (duplicated rows share one line)
        self.row_of_item = [0] * len(self.trie)
        for row in reversed(range(len(labels))):
            self.row_of_item[self.item_of_row[row]] = row

    def row_constraint(self, k: int, exclude_rows: Iterable[int] = ()) -> RowConstraint:
        return RowConstraint(k=k, exclude=frozenset(self.item_of_row[r] for r in exclude_rows))

    def processor(self, constraints: Sequence[RowConstraint | None]) -> CatalogLogitsProcessor:
        return CatalogLogitsProcessor(self.trie, constraints)

    def states(self, constraints: Sequence[RowConstraint]) -> list[RowState]:
        """A fresh trie walk per row, for `convrec.decoding.loop.decode_constrained`."""
        return [RowState(self.trie, c) for c in constraints]

    def replay(self, spec: RowConstraint, tokens: Sequence[int]) -> list[torch.Tensor]:
        """The token ids the processor allowed before each of ``tokens``: a constrained sample's walk
        replayed, so a loss can score it under the masked policy it was drawn from,
        π_c(x_t | x_<t) = π(x_t | x_<t) / Σ_{v allowed at t} π(v | x_<t)."""
        state, out = RowState(self.trie, spec), []
        for t, tok in enumerate(tokens):
            ids = state.next_ids(torch.device("cpu"))
            if not bool((ids == tok).any()):
                raise ConvrecError(
                    f"token {tok} at position {t} is outside the catalog constraint it was sampled under"
                )
            out.append(ids)
            state.advance(tok)
        return out

    def max_new_tokens(self, k: int) -> int:
        """A token budget that always fits k complete lines."""
        return k * self.trie.max_line_tokens + 2
