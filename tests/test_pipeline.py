"""Stage 1: the maths with hand-computed values, bad input, and real CLI runs remap -> reflect -> adjust."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from convrec import artifacts
from convrec.catalog import Catalog
from convrec.errors import ConvrecError
from convrec.evaluation.evaluate import evaluate
from convrec.pipeline import adjust, reflect, remap
from convrec.pipeline.common import pack_candidates, pipeline_catalog, topk_rows, unpack_candidates
from tests.conftest import SHARED_DATA, assert_user_error, catalog_frame, run_cli
from tests.stage1_data import small_world


@pytest.fixture(scope="module")
def stage1_cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stage1-cache")
    (d / "embeddings").mkdir()
    return d


# -- remap maths ---------------------------------------------------------------------------------
def test_rank_weights_are_one_over_sqrt_k() -> None:
    assert np.allclose(remap.rank_weights(4), [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])


def test_remap_parts_by_hand() -> None:
    # catalog items v0, v1, v2 in 2-d; teacher list: [u0 = exact v1, u1 = out of catalog]
    e_cat = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    e_teacher = np.array([[0.0, 1.0], [0.8, 0.6]], dtype=np.float32)  # u0 uses v1's vector
    e_conv = np.array([[1.0, 0.0]], dtype=np.float32)
    p = remap.list_matrix([np.array([0, 1])], 2)  # p = [1, 1/√2]
    exact = sp.csr_matrix(([1.0], ([0], [1])), shape=(2, 3))
    ex, sem, ctx = remap.remap_parts(p, exact, e_teacher, e_conv, e_cat, lam=2.0)
    r = 1 / math.sqrt(2)
    # pᵀS: v0: 1*0 + r*0.8; v1: 1*1 + r*0.6; v2: 1*0.8 + r*(0.48+0.48)
    assert np.allclose(sem, [[r * 0.8, 1 + r * 0.6, 0.8 + r * 0.96]], atol=1e-6)
    assert np.allclose(ex, [[0.0, 1.0, 0.0]])
    assert np.allclose(ctx, [[2.0, 0.0, 1.2]], atol=1e-6)  # λ · cos(conv, v)


def test_a_repeated_teacher_item_adds_its_weights() -> None:
    p = remap.list_matrix([np.array([0, 1, 0])], 2).toarray()
    assert np.allclose(p, [[1 + 1 / math.sqrt(3), 1 / math.sqrt(2)]])


def test_ground_counts_unparseable_answers_and_matches() -> None:
    cat = Catalog(catalog_frame())
    texts = [
        "Sure!\n1. The Matrix (1999)\n2. Matrx, The (1999)\n3. Nothing Like It (2010)",
        "I'm sorry, I can't help with that request today, maybe later.",
        "",
    ]
    g, bad = remap.ground(texts, cat, cutoff=85)
    assert bad == [1, 2]
    kinds = [g.kinds[u] for u in g.lists[0]]
    assert kinds == ["exact", "fuzzy", "none"]
    assert g.rows[g.lists[0][0]] == g.rows[g.lists[0][1]] == cat.lookup("The Matrix", 1999)


def test_topk_rows_orders_and_pads() -> None:
    s = np.array([[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 1.0, -np.inf]])
    assert topk_rows(s, 3).tolist() == [[1, 3, 0], [2, -1, -1]]


def test_candidates_round_trip() -> None:
    cat = Catalog(catalog_frame())
    rows = np.array([[3, 1, -1], [0, 2, 4]])
    fields = {
        "score": np.array([[1.0, 0.5, np.nan], [2.0, 1.0, 0.0]]),
        "rating": np.array([[2, np.nan, np.nan], [-1, 0, 1]]),
    }
    col = pack_candidates(rows, fields, cat)
    back_rows, back = unpack_candidates(col, cat)
    assert back_rows.tolist() == rows.tolist()
    assert np.allclose(back["score"], fields["score"], equal_nan=True)
    assert np.allclose(back["rating"], fields["rating"], equal_nan=True)


# -- catalog input -------------------------------------------------------------------------------
def test_duplicate_catalog_rows_are_dropped_and_counted() -> None:
    df = catalog_frame()
    dup = pl.concat(
        [df, df.head(2), df.head(1).with_columns(pl.lit("Matrix, The").alias("title"), pl.lit("x").alias("item_id"))]
    )
    dup = pl.concat(
        [dup, df.slice(5, 1).with_columns(pl.lit("The Matrix").alias("title"), pl.lit("zz").alias("item_id"))]
    )
    cat, dropped = pipeline_catalog(dup)
    # 2 repeated item_ids + "The Matrix (1999)" again under a new id; "Matrix, The (2000)" is new
    assert dropped == 3
    assert len(cat) == df.height + 1


def test_empty_catalog_is_a_user_error() -> None:
    with pytest.raises(ConvrecError, match="empty"):
        pipeline_catalog(catalog_frame().head(0))


# -- reflect -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "n", "ratings", "problem"),
    [
        ('{"ratings": {"1": 2, "2": -1}}', 2, {1: 2, 2: -1}, None),
        ('Here you go:\n```json\n{"ratings": {"1": 0, "2": 1}}\n```', 2, {1: 0, 2: 1}, None),
        ('{"ratings": [1, -2, 0]}', 3, {1: 1, 2: -2, 3: 0}, None),
        ('{"1": 1, "2": 2.0}', 2, {1: 1, 2: 2}, None),
        ('{"ratings": {"1": 5, "2": -1, "3": "good", "4": true, "5": 1.5}}', 5, {2: -1}, "out_of_range"),
        ('{"ratings": {"1": 1, "9": 2}}', 2, {1: 1}, "unknown_ids"),
        ("1: great, 2: bad", 2, {}, "not_json"),
        ('{"ratings": {"1": 1,', 2, {}, "not_json"),
        ('{"ratings": "all good"}', 2, {}, "not_json"),
        (None, 2, {}, "not_json"),
    ],
)
def test_parse_ratings(text, n, ratings, problem) -> None:
    got, problems = reflect.parse_ratings(text, n)
    assert got == ratings
    assert problems["missing"] == (n - len(ratings) if problem != "not_json" else 0)
    if problem:
        assert problems[problem] >= 1
    if problem == "out_of_range":
        assert problems["out_of_range"] == 4


def test_reflect_score_and_bands() -> None:
    s = np.array([[1.0, 0.5, 0.2]])
    r = np.array([[-2.0, np.nan, 2.0]])
    assert np.allclose(reflect.apply_ratings(s, r, 0.5), [[0.0, 0.5, 1.2]])
    z = np.array([-2.0, -1.0, 0.0, 0.49, 0.5, 1.5, np.nan])
    out = reflect.band(z)
    assert out[:-1].tolist() == [-2, -1, 0, 0, 1, 2] and np.isnan(out[-1])


# -- adjust --------------------------------------------------------------------------------------
def test_dense_scores_fill_the_floor() -> None:
    s = adjust.dense_scores(np.array([[2, 0, -1]]), np.array([[3.0, 1.0, np.nan]]), 4)
    assert s.tolist() == [[1.0, 1.0, 3.0, 1.0]]


def test_log_likelihood_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[False, False, True]])  # item 2 was seen
    ll = adjust.log_likelihood(s, mask, [np.array([0])], torch.ones(3), torch.zeros(3))
    assert math.isclose(float(ll), math.log(math.e / (math.e + 1)), rel_tol=1e-6)
    w, b = torch.tensor([2.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])  # logits 2, 1
    ll = adjust.log_likelihood(s, mask, [np.array([1])], w, b)
    assert math.isclose(float(ll), 1 - math.log(math.e**2 + math.e), rel_tol=1e-6)


def test_fit_learns_the_bias_the_teacher_missed() -> None:
    rng = np.random.default_rng(0)
    n_items, n = 6, 300
    rows = np.tile(np.arange(n_items), (n, 1))
    scores = rng.normal(size=(n, n_items))
    gt = [np.array([5]) if rng.random() < 0.7 else np.array([int(rng.integers(5))]) for _ in range(n)]
    seen = [np.zeros(0, dtype=np.int64)] * n
    w, b, stats = adjust.fit(rows, scores, seen, gt, n_items, adjust.AdjustConfig(max_iter=50))
    assert stats.ll_after > stats.ll_before + 0.3
    assert b[5] == b.max() and b[5] > 1.0  # item 5 is what users answer with
    w2, b2, stats2 = adjust.fit(rows, scores, seen, gt, n_items, adjust.AdjustConfig(l2=1e6, max_iter=20))
    # a huge penalty leaves only the shared scale: one temperature for every item, no per-item bias
    assert np.allclose(w2, stats2.scale, atol=1e-2) and np.allclose(b2, 0, atol=1e-2)


def _flat_teacher_world(rng: np.random.Generator, n: int, n_items: int = 100, clusters: int = 10):
    """Users want their taste cluster's items, popular ones more; the teacher knows the cluster but
    scores on a flat scale (as remap's cosines do) and ignores popularity."""
    cluster = np.arange(n_items) % clusters
    log_pop = -0.5 * np.log(1 + rng.permutation(n_items))
    taste = rng.integers(clusters, size=n)
    logits = log_pop[None, :] + 3.0 * (cluster[None, :] == taste[:, None])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gt = [rng.choice(n_items, size=2, replace=False, p=row) for row in p]
    scores = 0.3 * (cluster[None, :] == taste[:, None]) + 0.05 * rng.normal(size=(n, n_items))
    return np.tile(np.arange(n_items), (n, 1)), scores, gt


def test_adjust_moves_the_lists_towards_the_ground_truth() -> None:
    """Held out: after adjust, the top-20 item distribution is closer to the ground truth's (JS), and
    so is the share of the most popular items, with no item flooding the lists."""
    rng = np.random.default_rng(0)
    n_items, cfg = 100, adjust.AdjustConfig()
    rows, scores, gt = _flat_teacher_world(rng, 800, n_items)
    seen = [np.zeros(0, dtype=np.int64)] * 800
    w, b, stats = adjust.fit(rows[:600], scores[:600], seen[:600], gt[:600], n_items, cfg)
    out, _ = adjust.apply(rows[600:], {"score": scores[600:]}, seen[600:], w, b, cfg)
    before = [r[np.argsort(-s, kind="stable")][:20] for r, s in zip(rows[600:], scores[600:], strict=True)]
    after = [r[:20] for r in out]
    held = gt[600:]
    js_before, js_after = adjust.js_divergence(before, held, n_items), adjust.js_divergence(after, held, n_items)
    assert js_after < 0.95 * js_before
    popular = adjust.popular_items(
        gt[:600], Catalog(catalog_frame([(f"M{i}", 2000, 1.0) for i in range(n_items)])), 0.05
    )
    share = {k: adjust.popular_share(x, popular) for k, x in (("before", before), ("after", after), ("gt", held))}
    assert abs(share["after"] - share["gt"]) < abs(share["before"] - share["gt"])
    assert stats.scale > 2  # the flat teacher scores needed sharpening
    assert max(adjust.item_counts(after, n_items)) < 0.5 * len(after)  # no item in half of the lists


def test_ground_truth_first_by_hand() -> None:
    rows = np.array([[4, 2, 7, -1], [1, 3, 5, 6]])
    fields = {"score": np.array([[0.9, 0.8, 0.7, np.nan], [0.4, 0.3, 0.2, 0.1]])}
    out_rows, out = adjust.ground_truth_first(rows, fields, [np.array([7, 9]), np.array([], dtype=np.int64)])
    # sample 0: answers 7 (a candidate: keeps 0.7) and 9 (not one: NaN) lead, then 4 and 2; sample 1 unchanged
    assert out_rows.tolist() == [[7, 9, 4, 2], [1, 3, 5, 6]]
    assert np.allclose(out["score"][0], [0.7, np.nan, 0.9, 0.8], equal_nan=True)
    assert np.allclose(out["score"][1], fields["score"][1])


def test_fit_without_ground_truth_is_a_user_error() -> None:
    with pytest.raises(ConvrecError, match="no ground-truth"):
        adjust.fit(
            np.zeros((2, 2), dtype=np.int64),
            np.zeros((2, 2)),
            [np.zeros(0, dtype=np.int64)] * 2,
            [np.zeros(0, dtype=np.int64)] * 2,
            3,
            adjust.AdjustConfig(),
        )


# -- the synthetic teacher -----------------------------------------------------------------------
def test_synthetic_teacher_is_deterministic_and_imitates_llm_failures(tmp_path: Path) -> None:
    from convrec.data import load_split
    from convrec.pipeline.common import conversations
    from convrec.pipeline.teachers import answer

    data = small_world(tmp_path / "data")
    cat = Catalog(pl.read_parquet(data / "catalog.parquet"))
    convs = conversations(load_split(data, "train"))
    a = answer("synthetic", convs, data=data, split="train", catalog=cat, n=20, seed=0)
    b = answer("synthetic", convs, data=data, split="train", catalog=cat, n=20, seed=0)
    assert a.texts == b.texts and a.meant == b.meant
    lines = [ln for t in a.texts for ln in t.splitlines()]
    assert any(ln.startswith("1. ") for ln in lines)
    meant = [m for ms in a.meant for m in ms]
    assert None in meant  # invented titles
    g, _ = remap.ground(a.texts, cat, 85)
    kinds = [g.kinds[u] for lst in g.lists for u in lst]
    assert {"exact", "fuzzy", "none"} <= set(kinds)


# -- real CLI runs -------------------------------------------------------------------------------
def test_remap_reflect_adjust_cli_on_the_synthetic_world(tmp_path: Path, stage1_cache: Path) -> None:
    data = small_world(tmp_path / "data")
    c = ["--cache-dir", str(stage1_cache)]
    proc = run_cli(
        "remap", "--data", data, "--teacher", "synthetic", "--out", tmp_path / "remap.parquet",
        "--raw-out", tmp_path / "teacher.parquet", "--top-m", "40", *c,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "recovered (argmax of I + S)" in proc.stdout
    prov = artifacts.provenance(tmp_path / "remap.parquet")["params"]
    assert prov["stats"]["meant_lines"] > 0 and prov["stats"]["recovery"] > 0.8
    proc = run_cli(
        "reflect", "--in", tmp_path / "remap.parquet", "--data", data, "--judge", "embed",
        "--out", tmp_path / "reflect.parquet", "--top-n", "30", "--gamma", "0.5", *c,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    proc = run_cli("adjust", "--in", tmp_path / "reflect.parquet", "--data", data, "--out", tmp_path / "sft.parquet")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "log-lik per gt item (fit): before → after" in proc.stdout
    st = artifacts.provenance(tmp_path / "sft.parquet")["params"]["stats"]
    assert st["js_out"] < st["js_in"]  # the lists' item distribution moved towards the ground truth's
    assert abs(st["popular_share_out"] - st["popular_share_gt"]) <= abs(st["popular_share_in"] - st["popular_share_gt"])

    cat = Catalog(pl.read_parquet(data / "catalog.parquet"))
    train = pl.read_parquet(data / "train.parquet")
    # every step is a predictions file eval reads directly
    for name in ("teacher", "remap", "reflect", "sft"):
        preds = artifacts.read(tmp_path / f"{name}.parquet", "predictions")
        assert set(preds["sample_id"]) == set(train["sample_id"])
        summary, _ = evaluate(preds, train, cat)
        if name != "teacher":
            assert summary["in_catalog"] == 1.0 and summary["mean_list_length"] == 20
    # the remap score is the sum of its parts; reflect adds γ·r; adjust keeps the samples schema
    rem = artifacts.read(tmp_path / "remap.parquet", "predictions")
    rows, f = unpack_candidates(rem["candidates"], cat)
    ok = rows >= 0
    assert np.allclose(f["score"][ok], (f["exact"] + f["semantic"] + f["context"])[ok], atol=1e-4)
    ref = artifacts.read(tmp_path / "reflect.parquet", "predictions")
    rows, f = unpack_candidates(ref["candidates"], cat)
    ok = rows >= 0
    assert np.allclose(f["score"][ok], (f["remap"] + 0.5 * np.nan_to_num(f["rating"]))[ok], atol=1e-4)
    assert np.isfinite(f["rating"][:, :30][rows[:, :30] >= 0]).mean() > 0.5
    sft = artifacts.read(tmp_path / "sft.parquet", "samples")
    assert sft["ground_truth"].list.len().min() == 20
    assert sft["target_text"][0].count("\n") == 19
    assert {"target_item_ids", "candidates", "split_ground_truth"} <= set(sft.columns)
    # --ground-truth-first: each target starts with that conversation's answers, then the adjusted list
    proc = run_cli("adjust", "--in", tmp_path / "reflect.parquet", "--data", data, "--out", tmp_path / "gtf.parquet",
                   "--ground-truth-first")  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    gtf = artifacts.read(tmp_path / "gtf.parquet", "samples")
    answers = dict(zip(train["sample_id"], train["ground_truth"].to_list(), strict=True))

    def rows_of(items: list[dict]) -> list[int]:
        return [cat.lookup(x["title"], x["year"]) for x in items]

    for sid, target, plain in zip(gtf["sample_id"], gtf["ground_truth"].to_list(), sft["ground_truth"].to_list(),
                                  strict=True):  # fmt: skip
        gt = [r for r in dict.fromkeys(rows_of(answers[sid])) if r >= 0]  # answers outside the catalog drop out
        got = rows_of(target)
        assert got[: len(gt)] == gt and len(got) == 20
        assert got[len(gt) :] == [r for r in rows_of(plain) if r not in gt][: 20 - len(gt)]


def test_remap_tune_chooses_beta_and_lambda_on_val(tmp_path: Path, stage1_cache: Path) -> None:
    """--tune scores every (β, λ) of the grid on val; the choice is never below the teacher's own
    in-catalog lists there (β = λ = 0 is one of the choices) and is what the run uses."""
    data = small_world(tmp_path / "data")
    proc = run_cli(
        "remap", "--data", data, "--teacher", "synthetic", "--split", "test", "--out", tmp_path / "r.parquet",
        "--top-m", "40", "--tune", "--cache-dir", str(stage1_cache),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "--tune on val: chosen β / λ" in proc.stdout
    params = artifacts.provenance(tmp_path / "r.parquet")["params"]
    tune = params["tune"]
    assert len(tune["ndcg"]) == len(remap.TUNE_GRID)
    assert (params["semantic"], params["lam"]) == (tune["semantic"], tune["lam"])
    best = tune["ndcg"][f"{tune['semantic']},{tune['lam']}"]
    assert best == max(tune["ndcg"].values()) and best >= tune["raw_ndcg"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["remap", "--teacher", "synthetic", "--fraction", "0"], "--fraction"),
        (["remap", "--teacher", "synthetic", "--top-m", "5"], "--top-m"),
        (["remap", "--teacher", "cooc", "--describe"], "--describe"),
        (["remap", "--teacher", "synthetic", "--split", "dev"], "--split"),
        (["reflect", "--judge", "embed", "--in", "{data}/train.parquet"], "items"),
        (["reflect", "--judge", "embed", "--in", "{data}/nope.parquet"], "no such file"),
        (["adjust", "--in", "{data}/catalog.parquet"], "sample_id"),
        (["reflect", "--judge", "embed", "--in", "{data}/train.parquet", "--gamma", "-1"], "--gamma"),
    ],
)
def test_bad_cli_input_is_one_line(tmp_path: Path, tiny_data: Path, args, needle) -> None:
    args = [a.replace("{data}", str(tiny_data)) for a in args]
    proc = run_cli(*args, "--data", tiny_data, "--out", tmp_path / "out.parquet")
    assert_user_error(proc, needle)


def test_synthetic_teacher_needs_a_synthetic_world(tmp_path: Path, tiny_data: Path) -> None:
    proc = run_cli("remap", "--data", tiny_data, "--teacher", "synthetic", "--out", tmp_path / "r.parquet")
    assert_user_error(proc, "latent.parquet")


def test_empty_catalog_cli(tmp_path: Path, tiny_data: Path) -> None:
    artifacts.write(catalog_frame().head(0), tiny_data / "catalog.parquet", "catalog", stage="test")
    proc = run_cli("remap", "--data", tiny_data, "--teacher", "cooc", "--out", tmp_path / "r.parquet")
    assert_user_error(proc, "empty")


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_DATA / "redial" / "test.jsonl").exists(), reason="needs ../shared/data/redial")
def test_cooc_teacher_on_redial_is_k_fold(tmp_path: Path) -> None:
    """On train the cooc teacher never answers with a model that saw the conversation's own answer."""
    from convrec.data import load_split
    from convrec.data.redial import import_redial
    from convrec.pipeline.common import conversations
    from convrec.pipeline.teachers import answer

    import_redial(SHARED_DATA / "redial" / "test.jsonl", tmp_path / "rd")
    cat = Catalog(pl.read_parquet(tmp_path / "rd" / "catalog.parquet"))
    train = load_split(tmp_path / "rd", "train")
    convs = conversations(train)
    out = answer("cooc", convs, data=tmp_path / "rd", split="train", catalog=cat, n=20, seed=0)
    preds = pl.DataFrame(
        {
            "sample_id": train.unique("conversation_id", keep="first", maintain_order=True)["sample_id"],
            "text": out.texts,
        }
    )
    leaky = answer("cooc", convs, data=tmp_path / "rd", split="val", catalog=cat, n=20, seed=0)  # fit on all of train
    leaky_preds = preds.with_columns(pl.Series("text", leaky.texts))
    honest, _ = evaluate(preds, train, cat)
    cheat, _ = evaluate(leaky_preds, train, cat)
    assert honest["recall@20"] < cheat["recall@20"]  # seeing the answers would inflate the teacher


def test_embedding_caches_are_reused_and_normalised(tmp_path: Path) -> None:
    from convrec.pipeline.embed import Embedder

    texts = ["a heist movie", "space adventure with robots", "a heist movie"]
    e1 = Embedder(None, tmp_path, progress=False)
    v1 = e1.texts(texts)
    c1 = e1.catalog(["Dune (2021). Genres: sci-fi.", "Elf (2003). Genres: comedy."])
    assert e1.computed == 2 + 2  # the repeated text is embedded once
    assert np.allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5) and np.allclose(v1[0], v1[2])
    e2 = Embedder(None, tmp_path, progress=False)
    assert np.allclose(e2.texts(texts), v1) and np.allclose(
        e2.catalog(["Dune (2021). Genres: sci-fi.", "Elf (2003). Genres: comedy."]), c1
    )
    assert e2.computed == 0


def test_unknown_embedder_is_a_user_error(tmp_path: Path) -> None:
    from convrec.pipeline.embed import Embedder

    with pytest.raises(ConvrecError, match="cannot load embedder"):
        Embedder(str(tmp_path / "no-such-model"), tmp_path).model  # noqa: B018


class _HashEmbedder:
    """Deterministic unit vectors per text: remap.run's maths without loading a model."""

    computed = 0

    def _vec(self, text: str) -> np.ndarray:
        v = np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8).astype(np.float32)
        return v / np.linalg.norm(v)

    def catalog(self, texts):
        return np.stack([self._vec(t) for t in texts])

    def texts(self, texts, desc=""):
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, 8), np.float32)


def test_remap_run_equals_the_formula(tiny_data: Path) -> None:
    """The fused batch path of remap.run gives s = pᵀ(S + I) + λ·s_context, seen items excluded."""
    from convrec.data import load_split
    from convrec.pipeline.common import conversations, item_texts
    from convrec.pipeline.teachers import TeacherOutput

    cat = Catalog(catalog_frame())
    samples = load_split(tiny_data, "train")
    texts = [
        "1. Dune (2021)\n2. Elf (2003)\n3. Made Up Film (1990)",
        "Fargo (1996)",
        "Sorry, I cannot help with that request.",
        "Dune",
    ]
    emb = _HashEmbedder()
    cfg = remap.RemapConfig(n=3, top_m=5, lam=0.7, batch_size=2)
    out, raw, stats = remap.run(samples, TeacherOutput(texts), cat, emb, cfg)
    assert stats.unparseable == 1 and raw["items"].list.len().to_list() == [3, 1, 0, 1]
    g, _ = remap.ground(texts, cat, cfg.fuzzy_cutoff)
    e_cat = emb.catalog(item_texts(cat))
    e_t = np.stack(
        [e_cat[r] if r >= 0 else emb._vec(f"{t} ({y})" if y else t) for (t, y), r in zip(g.keys, g.rows, strict=True)]
    )
    from convrec.pipeline.common import conversation_text

    e_conv = emb.texts([conversation_text(m) for m in conversations(samples)["messages"].to_list()])
    exact = sp.csr_matrix(
        (np.ones((g.rows >= 0).sum()), (np.flatnonzero(g.rows >= 0), g.rows[g.rows >= 0])),
        shape=(len(g.keys), len(cat)),
    )
    ex, sem, ctx = remap.remap_parts(remap.list_matrix(g.lists, len(g.keys)), exact, e_t, e_conv, e_cat, cfg.lam)
    want = ex + sem + ctx
    rows, f = unpack_candidates(out["candidates"], cat)
    seen = [cat.lookup("The Matrix", 1999)] * 2 + [cat.lookup("Elf", 2003), None]
    for i in range(len(texts)):
        w = want[i].copy()
        if seen[i] is not None:
            w[seen[i]] = -np.inf
        order = np.argsort(-w)[:5]
        assert set(rows[i].tolist()) == set(order.tolist())
        assert np.allclose(f["score"][i], w[rows[i]], atol=1e-5)
        assert np.allclose(f["semantic"][i], sem[i, rows[i]], atol=1e-5)
        assert np.allclose(f["exact"][i], ex[i, rows[i]], atol=1e-6)


def test_fraction_keeps_whole_conversations_and_is_seeded(tmp_path: Path) -> None:
    from convrec.data import load_split

    train = load_split(small_world(tmp_path / "data"), "train")
    a = remap.sample_fraction(train, 0.25, seed=1)
    b = remap.sample_fraction(train, 0.25, seed=1)
    n_conv = train["conversation_id"].n_unique()
    assert a.equals(b) and a["conversation_id"].n_unique() == math.ceil(0.25 * n_conv)
    kept = set(a["conversation_id"])
    assert train.filter(pl.col("conversation_id").is_in(kept)).height == a.height  # every sample of a kept conversation
    assert remap.sample_fraction(train, 1.0, seed=1).height == train.height
