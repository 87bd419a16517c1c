"""`convrec demo`: thin shell over `convrec.demo` (the plan) that prints the final tables."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from convrec.cli.choices import Size
from convrec.cli.common import console
from convrec.errors import ConvrecError


def demo_command(
    ctx: typer.Context,
    out: Path = typer.Option(Path("out/demo"), "--out", help="Folder for every artifact (data, stage 1, runs, pred)."),
    size: Size = typer.Option("small", "--size", help="small (minutes on 2 CPU cores) or medium."),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="Pipeline file (TOML/YAML, as for `convrec --config`): its \\[sft], \\[rl], \\[remap], ... settings "
        "override the demo's defaults; `data = DIR` runs on your own data instead of the synthetic world.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Your data folder (catalog + train/val/test) instead of the synthetic world."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the world, the student and every run."),
    nproc: int = typer.Option(
        1, "--nproc", help="Processes for sft and rl (torchrun; set `deepspeed` in the config for ZeRO-2)."
    ),
    restart: bool = typer.Option(False, "--restart", help="Rerun every step, even those already done in --out."),
) -> None:
    """The whole ConvRec-R1 pipeline on the embedded default: world → Stage 1 → SFT → RL → eval → report."""
    from convrec.cli import config
    from convrec.demo import plan as demo
    from convrec.demo import results, runner

    root = ctx.find_root().command  # the `convrec` click group this command runs in (no import of cli.main)
    if config_file is None and ctx.parent is not None:  # `convrec --config F demo` passes the file on too
        config_file = ctx.parent.params.get("config_file")
    settings: dict = {}
    own = {"out": out, "size": size, "seed": seed, "data": data, "nproc": nproc}
    if config_file is not None:
        settings = config.load(root, config_file)
        mine = settings.get("demo", {})  # [demo] and shared keys such as `data`; the command line wins
        for name, value in mine.items():
            if ctx.get_parameter_source(name).name in ("DEFAULT", "DEFAULT_MAP"):
                own[name] = value
    out, size, seed, data, nproc = (own[k] for k in ("out", "size", "seed", "data", "nproc"))
    if size not in demo.SIZES:
        raise ConvrecError(f"--size must be one of {', '.join(demo.SIZES)}, got '{size}'")
    if nproc < 1:
        raise ConvrecError(f"--nproc must be at least 1, got {nproc}")
    if data is not None and not Path(data).is_dir():
        raise ConvrecError(f"--data {data}: no such data folder")
    opts = demo.Options(
        out=Path(out),
        size=size,
        seed=seed,
        data=Path(data) if data is not None else None,
        config=config_file,
        nproc=nproc,
        settings=settings,
    )
    state = runner.run(opts, console, root, restart=restart)

    steps = Table(title="stages")
    for col in ("step", "seconds", ""):
        steps.add_column(col, justify="right" if col == "seconds" else "left")
    for key, rec in state["steps"].items():
        steps.add_row(key, f"{rec['seconds']:.1f}", "" if key in state["ran"] else "done by an earlier run")
    console.print(steps)

    trained = {demo.ROWS[k] for k in demo.TRAINED}
    data_dir = opts.data or opts.out / "data"
    console.print(_final_table(results.final_rows(opts.out / "metrics.json", data_dir), trained))
    ran = len(state["ran"])
    minutes = state["wall_seconds_this_run"] / 60
    console.print(f"wall time {minutes:.1f} min ({ran} of {len(state['steps'])} steps ran now)", highlight=False)
    console.print(f"report: {escape(str(opts.out / 'report' / 'index.md'))}")
    console.print("try the recommender:")
    console.print(
        f"  convrec serve --model {escape(str(opts.out / 'runs' / 'rank_grpo' / 'last'))} "
        f"--data {escape(str(data_dir))} --port 8000   # then open http://127.0.0.1:8000/",
        soft_wrap=True,
        highlight=False,
    )


def _interval(lo_hi) -> str:
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else ""


def _paired(p: dict | None) -> str:
    """`+0.0123 [+0.004, +0.021]`: a paired difference of NDCG@20 and its 95 % interval."""
    if not p or "ndcg@20" not in p:
        return ""
    d = p["ndcg@20"]
    return f"{d['diff']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _final_table(rows: list[tuple[str, dict]], trained: set[str]) -> Group:
    """Two tables that each fit a terminal: Recall/NDCG@5/10/20 per row; then NDCG@20 with its 95 %
    interval and, for the trained rows, the paired difference (bootstrap over the same test
    samples) against co-occurrence and, for the RL rows, against SFT."""
    ks = (5, 10, 20)
    metrics = Table(title="test split (from metrics.json)")
    metrics.add_column("model", no_wrap=True)
    for name in ("R", "N"):
        for k in ks:
            metrics.add_column(f"{name}@{k}", justify="right")
    metrics.add_column("in-catalog", justify="right")
    spread = Table(title="NDCG@20: 95 % interval; paired difference [95 % interval]")
    spread.add_column("model", no_wrap=True)
    for col in ("N@20", "interval", "vs co-occurrence", "vs SFT"):
        spread.add_column(col, justify="right")
    for label, s in rows:
        metrics.add_row(
            label,
            *[f"{s[f'recall@{k}']:.4f}" for k in ks],
            *[f"{s[f'ndcg@{k}']:.4f}" for k in ks],
            f"{s['in_catalog']:.1%}",
        )
        mine = label in trained
        spread.add_row(
            label,
            f"{s['ndcg@20']:.4f}",
            _interval(s.get("intervals", {}).get("ndcg@20")),
            _paired(s.get("paired_vs_baseline")) if mine else "",
            _paired(s.get("paired_vs_sft")) if mine else "",
        )
    return Group(metrics, spread)
