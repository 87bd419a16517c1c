"""Remap: project a teacher's free-text lists onto the catalog.

    s_remap = pᵀ (β·S + I) + λ · s_context,   p_k = 1/√k

p is the teacher's list (k-th parsed line weighs 1/√k); I[u, v] = 1 when teacher item u is
catalog item v, decided by the one catalog matcher (exact, then rapidfuzz for misspellings, with
the year penalty); S[u, v] = cos(e_u, e_v) of item-text embeddings; s_context[v] = cos(conversation,
item v). Item texts: catalog items from their metadata; a teacher item the matcher resolved *is*
that catalog item, so it uses the item's text; the rest use their title (or a one-line description
from the teacher with ``describe``). β = λ = 1 is the paper's remap; `tune` picks them on a
validation split, where β = λ = 0 (the matched teacher items in the teacher's order) is one of the
choices, so remap is never worse there than the teacher's in-catalog lists.

Vectorised by linearity: pᵀ S = (pᵀ E_T) E_Cᵀ, so the semantic and context parts of a whole batch
of conversations are one matrix product, (P E_T + λ E_conv) E_Cᵀ, and the exact part is a sparse
product P I. S itself is never materialised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from convrec.catalog import Catalog
from convrec.listfmt import parse_lines
from convrec.pipeline.common import (
    conversation_text,
    conversations,
    item_texts,
    pack_candidates,
    seen_mask_rows,
    top_lists,
    topk_rows,
)
from convrec.pipeline.embed import Embedder
from convrec.pipeline.teachers import TeacherOutput

MAX_LINES = 100  # a runaway answer does not get to spread its score over hundreds of titles


@dataclass
class RemapConfig:
    n: int = 20  # teacher list length asked for, and the length of the output lists
    top_m: int = 200  # candidates kept per conversation (reflect rates the first N_r of them)
    lam: float = 1.0
    semantic: float = 1.0  # β, the weight of the semantic item-item term against the exact match
    fuzzy_cutoff: float = 85.0
    batch_size: int = 512


@dataclass
class RemapStats:
    conversations: int = 0
    samples: int = 0
    unparseable: int = 0  # answers with no parseable line (kept; such a conversation is scored by context only)
    lines: int = 0
    exact: int = 0
    fuzzy: int = 0
    unmatched: int = 0  # out of catalog for the matcher: reach the catalog through S only
    meant_lines: int = 0  # synthetic teacher: lines that meant a catalog item
    recovered: int = 0  # ... whose strongest remap target is that item
    recovered_by_matcher: int = 0
    meant_misaligned: int = 0  # answers whose parsed lines did not line up with the written ones
    meant_in_top: int = 0  # meant items (not seen) in the remap top-n
    meant_total: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def recovery(self) -> float:
        return self.recovered / self.meant_lines if self.meant_lines else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["recovery"] = self.recovery
        return d


def rank_weights(k: int) -> np.ndarray:
    """p_k = 1/√k for k = 1..K."""
    return 1.0 / np.sqrt(np.arange(1, k + 1, dtype=np.float64))


def remap_parts(
    p: sp.csr_matrix, exact: sp.csr_matrix, e_teacher: np.ndarray, e_conv: np.ndarray, e_cat: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact, semantic, context) parts of s_remap for a batch: pᵀI, pᵀS, λ·s_context, each (B, |C|)."""
    ex = (p @ exact).toarray().astype(np.float32, copy=False)
    sem = np.asarray(p @ e_teacher, dtype=np.float32) @ e_cat.T
    ctx = lam * (e_conv @ e_cat.T)
    return ex, sem, ctx.astype(np.float32, copy=False)


@dataclass
class Grounded:
    """Every distinct teacher item of the run, resolved once."""

    keys: list[tuple[str, int | None]]
    rows: np.ndarray  # catalog row, -1 when the matcher found none
    kinds: list[str]  # exact | fuzzy | none
    lists: list[np.ndarray]  # per conversation: indices into keys, in list order


def teacher_items(text: str | None) -> list[tuple[str, int | None]]:
    """The items of a teacher answer. When some lines are numbered or bulleted, the unmarked ones are
    prose around the list ("Sure!", "Enjoy!") even if short enough to pass for a title."""
    lines = [ln for ln in parse_lines(text) if ln.item is not None]
    if any(ln.marked for ln in lines):
        lines = [ln for ln in lines if ln.marked]
    return [ln.item for ln in lines]


def ground(texts: list[str], catalog: Catalog, cutoff: float) -> tuple[Grounded, list[int]]:
    """Parse every answer and resolve the distinct items with the shared matcher."""
    index: dict[tuple[str, int | None], int] = {}
    lists, unparseable = [], []
    for i, text in enumerate(texts):
        items = teacher_items(text)[:MAX_LINES]
        if not items:
            unparseable.append(i)
        lists.append(np.fromiter((index.setdefault(it, len(index)) for it in items), dtype=np.int64))
    keys = list(index)
    matches = catalog.match([t for t, _ in keys], [y for _, y in keys], cutoff=cutoff)
    rows = np.array([m.row for m in matches], dtype=np.int64)
    return Grounded(keys, rows, [m.kind for m in matches], lists), unparseable


def list_matrix(lists: list[np.ndarray], n_keys: int) -> sp.csr_matrix:
    """P: conversations x distinct teacher items, p_k = 1/√k at each list position (repeats add up)."""
    lengths = [len(x) for x in lists]
    weights = rank_weights(max(lengths, default=0))
    data = np.concatenate([weights[:n] for n in lengths]) if lists else np.zeros(0)
    indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    m = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(len(lists), n_keys))
    m.sum_duplicates()
    return m


@dataclass
class Prepared:
    """What every (β, λ) of one run shares: the grounded lists and the embeddings."""

    convs: pl.DataFrame
    g: Grounded
    unparseable: list[int]
    e_cat: np.ndarray
    e_teacher: np.ndarray
    e_conv: np.ndarray
    p: sp.csr_matrix
    exact: sp.csr_matrix
    seen: list[np.ndarray]


def prepare(
    samples: pl.DataFrame,
    teacher: TeacherOutput,
    catalog: Catalog,
    embedder: Embedder,
    cfg: RemapConfig,
    describe: Callable[[list[tuple[str, int | None]]], dict] | None = None,
) -> Prepared:
    convs = conversations(samples)
    g, unparseable = ground(teacher.texts, catalog, cfg.fuzzy_cutoff)
    e_cat = embedder.catalog(item_texts(catalog))
    e_teacher = np.zeros((len(g.keys), e_cat.shape[1]), dtype=np.float32)
    matched = g.rows >= 0
    e_teacher[matched] = e_cat[g.rows[matched]]
    loose = np.flatnonzero(~matched)
    if len(loose):
        descriptions = describe([g.keys[u] for u in loose]) if describe else {}
        texts = []
        for u in loose:
            t, y = g.keys[u]
            label = f"{t} ({y})" if y is not None else t
            d = descriptions.get((t, y))
            texts.append(f"{label}. {d}" if d else label)
        e_teacher[loose] = embedder.texts(texts, "embedding out-of-catalog teacher items")
    e_conv = embedder.texts([conversation_text(m) for m in convs["messages"].to_list()], "embedding conversations")
    exact = sp.csr_matrix(
        (np.ones(int(matched.sum())), (np.flatnonzero(matched), g.rows[matched])), shape=(len(g.keys), len(catalog))
    )
    p = list_matrix(g.lists, len(g.keys))
    seen = seen_mask_rows(catalog, convs["seen"])
    return Prepared(convs, g, unparseable, e_cat, e_teacher, e_conv, p, exact, seen)


def score(prep: Prepared, cfg: RemapConfig, m: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Top-m catalog rows per conversation and their parts (score, exact, semantic, context)."""
    n_conv, e_cat = prep.convs.height, prep.e_cat
    m = min(m, e_cat.shape[0])
    all_rows = np.full((n_conv, m), -1, dtype=np.int64)
    parts = {k: np.full((n_conv, m), np.nan, dtype=np.float32) for k in ("score", "exact", "semantic", "context")}
    for start in range(0, n_conv, cfg.batch_size):
        sl = slice(start, min(start + cfg.batch_size, n_conv))
        # remap_parts fused: one dense product for semantic + context over the catalog; the parts
        # are split again only for the top-M
        q_sem = cfg.semantic * np.asarray(prep.p[sl] @ prep.e_teacher, dtype=np.float32)
        total = (q_sem + cfg.lam * prep.e_conv[sl]) @ e_cat.T
        ex = (prep.p[sl] @ prep.exact).toarray().astype(np.float32, copy=False)
        total += ex
        for i, s in enumerate(prep.seen[sl]):
            total[i, s] = -np.inf  # a seen item is never a recommendation
        top = topk_rows(total, m)
        ok = top >= 0
        safe = np.where(ok, top, 0)
        all_rows[sl, : top.shape[1]] = top
        sc = np.take_along_axis(total, safe, axis=1)
        ex_top = np.take_along_axis(ex, safe, axis=1)
        sem_top = np.concatenate(
            [np.einsum("bd,bmd->bm", q_sem[a : a + 64], e_cat[safe[a : a + 64]]) for a in range(0, len(safe), 64)]
        )
        ctx_top = sc - ex_top - sem_top
        for name, vals in (("score", sc), ("exact", ex_top), ("semantic", sem_top), ("context", ctx_top)):
            parts[name][sl, : top.shape[1]] = np.where(ok, vals, np.nan)
    return all_rows, parts


def run(
    samples: pl.DataFrame,
    teacher: TeacherOutput,
    catalog: Catalog,
    embedder: Embedder,
    cfg: RemapConfig,
    *,
    describe: Callable[[list[tuple[str, int | None]]], dict] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, RemapStats]:
    """(remap frame per sample, the teacher's raw lists per sample, stats). ``teacher`` answers the
    rows of `conversations(samples)` in order."""
    prep = prepare(samples, teacher, catalog, embedder, cfg, describe)
    convs, g = prep.convs, prep.g
    stats = RemapStats(conversations=convs.height, samples=samples.height)
    stats.unparseable = len(prep.unparseable)
    all_kinds = [g.kinds[u] for lst in g.lists for u in lst]
    stats.lines = len(all_kinds)
    stats.exact, stats.fuzzy = all_kinds.count("exact"), all_kinds.count("fuzzy")
    stats.unmatched = all_kinds.count("none")
    all_rows, parts = score(prep, cfg, cfg.top_m)
    if teacher.meant is not None:
        _recovery(stats, g, teacher.meant, prep.e_teacher, prep.e_cat, catalog, all_rows, prep.seen, cfg.n)

    kind_code = np.array([{"exact": 0, "fuzzy": 1}.get(k, 2) for k in g.kinds], dtype=np.int8)
    conv_frame = convs.select("conversation_id").with_columns(
        pack_candidates(all_rows, parts, catalog),
        pl.Series("teacher_lines", [len(x) for x in g.lists], dtype=pl.Int32),
        pl.Series("teacher_exact", [int((kind_code[x] == 0).sum()) for x in g.lists], dtype=pl.Int32),
        pl.Series("teacher_fuzzy", [int((kind_code[x] == 1).sum()) for x in g.lists], dtype=pl.Int32),
        pl.Series("unparseable", [len(x) == 0 for x in g.lists]),
    )
    items, texts = top_lists(all_rows, catalog, cfg.n)
    conv_frame = conv_frame.with_columns(
        items,
        pl.Series("text", texts),
    )
    out = samples.select("sample_id", "conversation_id", "messages", "seen").join(
        conv_frame, on="conversation_id", how="left", maintain_order="left"
    )
    return out, raw_frame(samples, teacher, g), stats


def raw_frame(samples: pl.DataFrame, teacher: TeacherOutput, g: Grounded) -> pl.DataFrame:
    """The teacher's answers per sample: text, parsed items, how each matched (eval-able as is)."""
    convs = conversations(samples)
    flat = np.concatenate(g.lists) if g.lists else np.zeros(0, dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(x) for x in g.lists])]).astype(np.int32))
    key_titles = np.asarray([t for t, _ in g.keys], dtype=object)
    key_years = pa.array([y for _, y in g.keys], type=pa.int64())
    parsed = pa.StructArray.from_arrays(
        [pa.array(key_titles[flat].tolist(), type=pa.string()), key_years.take(pa.array(flat))], names=["title", "year"]
    )
    kinds = np.asarray(g.kinds, dtype=object)
    raw_conv = convs.select("conversation_id").with_columns(
        pl.Series("text", teacher.texts),
        pl.Series("items", pa.ListArray.from_arrays(offsets, parsed)),
        pl.Series("match", pa.ListArray.from_arrays(offsets, pa.array(kinds[flat].tolist(), type=pa.string()))),
    )
    if teacher.meant is not None:
        raw_conv = raw_conv.with_columns(pl.Series("meant_item_ids", teacher.meant, dtype=pl.List(pl.String)))
    return samples.select("sample_id", "conversation_id").join(
        raw_conv, on="conversation_id", how="left", maintain_order="left"
    )


# (β, λ) tried by `tune`; (0, 0) is the teacher's own in-catalog list, (1, 1) the paper's remap
TUNE_GRID = tuple((b, lam) for b in (0.0, 0.1, 0.3, 1.0) for lam in (0.0, 0.1, 0.3, 1.0))


@dataclass
class Tuned:
    semantic: float
    lam: float
    ndcg: dict[str, float]  # "β,λ" -> validation NDCG@n
    raw_ndcg: float  # the teacher's raw lists (in-catalog items) on the same split

    @property
    def best(self) -> float:
        return self.ndcg[f"{self.semantic},{self.lam}"]


def tune(
    samples: pl.DataFrame,
    teacher: TeacherOutput,
    catalog: Catalog,
    embedder: Embedder,
    cfg: RemapConfig,
    grid: tuple[tuple[float, float], ...] = TUNE_GRID,
) -> Tuned:
    """β and λ with the best NDCG@n on ``samples`` (a validation split with ground truth); ties go
    to the earlier, simpler choice in ``grid``."""
    from dataclasses import replace

    from convrec.baselines import predictions_frame
    from convrec.evaluation.evaluate import EvalConfig, evaluate

    prep = prepare(samples, teacher, catalog, embedder, cfg)
    conv_row = {c: i for i, c in enumerate(prep.convs["conversation_id"].to_list())}
    which = [conv_row[c] for c in samples["conversation_id"].to_list()]
    ecfg = EvalConfig(ks=(cfg.n,), n_items=cfg.n, n_boot=0)
    key = f"ndcg@{cfg.n}"
    ndcg = {}
    for beta, lam in grid:
        rows, _ = score(prep, replace(cfg, semantic=beta, lam=lam), cfg.n)
        preds = predictions_frame(samples["sample_id"].to_list(), [rows[i][rows[i] >= 0] for i in which], catalog)
        ndcg[f"{beta},{lam}"] = evaluate(preds, samples, catalog, ecfg)[0][key]
    raw = evaluate(raw_frame(samples, teacher, prep.g), samples, catalog, ecfg)[0][key]
    best = max(grid, key=lambda bl: ndcg[f"{bl[0]},{bl[1]}"])  # max keeps the first of equals
    return Tuned(best[0], best[1], ndcg, raw)


def _recovery(
    stats: RemapStats,
    g: Grounded,
    meant: list[list[str | None]],
    e_teacher: np.ndarray,
    e_cat: np.ndarray,
    catalog: Catalog,
    top_rows: np.ndarray,
    seen: list[np.ndarray],
    n: int,
) -> None:
    """Share of teacher lines whose strongest remap target, argmax_v (I + S)[u, v], is the item meant;
    and share of meant (unseen) items that made the remap top-n."""
    target = g.rows.copy()
    loose = np.flatnonzero(target < 0)
    for start in range(0, len(loose), 4096):
        idx = loose[start : start + 4096]
        target[idx] = (e_teacher[idx] @ e_cat.T).argmax(axis=1)
    row_of = catalog.row_of_id
    for i, (lst, mt) in enumerate(zip(g.lists, meant, strict=True)):
        if len(lst) != len(mt):
            stats.meant_misaligned += 1
            continue
        for u, item in zip(lst, mt, strict=True):
            if item is None or item not in row_of:
                continue
            r = row_of[item]
            stats.meant_lines += 1
            stats.recovered += int(target[u] == r)
            stats.recovered_by_matcher += int(g.rows[u] == r)
        want = {row_of[x] for x in mt if x is not None and x in row_of} - set(seen[i].tolist())
        top = set(top_rows[i][top_rows[i] >= 0][:n].tolist())
        stats.meant_total += len(want)
        stats.meant_in_top += len(want & top)


def sample_fraction(samples: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """A seeded subset of whole conversations (the paper distils 25 % of the training set)."""
    if fraction >= 1.0:
        return samples
    ids = samples["conversation_id"].unique(maintain_order=True).to_list()
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(len(ids))[: max(1, math.ceil(fraction * len(ids)))].tolist())
    chosen = [c for i, c in enumerate(ids) if i in keep]
    return samples.filter(pl.col("conversation_id").is_in(chosen))
