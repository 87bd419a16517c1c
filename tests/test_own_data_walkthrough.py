"""docs/own-data.md end to end: its `sh` commands, in order, on a small chat log and catalog this test
writes (offline teacher and judge), ending with a served model that answers with catalog items."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
from pathlib import Path

import httpx
import polars as pl

from tests.conftest import run_cli, start_server, stop_server

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
GENRES = {
    "Crime": ["Heat", "The Town", "Collateral", "Ronin", "Drive", "Sicario", "Thief", "Point Break"],
    "Comedy": ["Superbad", "Step Brothers", "Anchorman", "Zoolander", "Airplane", "Hot Fuzz", "Tropic Thunder", "Elf"],
    "Horror": ["Alien", "Hereditary", "The Thing", "Halloween", "Scream", "Insidious", "Sinister", "The Ring"],
}
ASKS = {"Crime": "any other crime films?", "Comedy": "something funny tonight?", "Horror": "a scary one please?"}


def write_inputs(folder: Path, n: int = 90, seed: int = 0) -> None:
    """A catalog CSV and chat JSONL in the shapes the page shows: each user names a liked film and a
    genre, the assistant answers with two or three films of that genre, sometimes twice."""
    rng = random.Random(seed)
    years = {t: 1980 + (i * 7) % 40 for i, t in enumerate(t for ts in GENRES.values() for t in ts)}
    rows = [{"title": t, "year": years[t], "genres": g} for g, ts in GENRES.items() for t in ts]
    pl.DataFrame(rows).write_csv(folder / "catalog.csv")
    label = lambda t: f"{t} ({years[t]})"  # noqa: E731
    with open(folder / "chats.jsonl", "w") as fh:
        for i in range(n):
            genre = rng.choice(list(GENRES))
            liked, *picks = rng.sample(GENRES[genre], 5)
            msgs = [
                {"role": "user", "content": f"I loved {label(liked)}, {ASKS[genre]}"},
                {"role": "assistant", "content": f"Try {label(picks[0])} and {label(picks[1])}."},
            ]
            if rng.random() < 0.5:
                msgs += [
                    {"role": "user", "content": "Seen those. More?"},
                    {"role": "assistant", "content": f"Then {label(picks[2])}."},
                ]
            day = 1 + i // 10
            fh.write(
                json.dumps({"conversation_id": f"c{i}", "timestamp": f"2024-03-{day:02d}T10:00:00Z", "messages": msgs})
            )
            fh.write("\n")


def doc_commands() -> list[list[str]]:
    """The `convrec ...` lines of the page's ```sh blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("convrec ")]


def test_the_walkthrough_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:
    write_inputs(tmp_path)
    commands = doc_commands()
    assert [c[1] for c in commands] == ["data", "remap", "reflect", "adjust", "model", "sft", "serve"]
    *offline, serve = commands
    for cmd in offline:
        proc = run_cli(*cmd[1:], cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:], proc.stdout[-2000:])
        if cmd[1] == "data":
            assert "# Data report" in proc.stdout
    report = json.loads((tmp_path / "mydata" / "report.json").read_text())
    assert report["samples"]["train"] > 50 and report["split"].startswith("by time")
    assert (tmp_path / "stage1" / "sft_set.parquet").exists() and (tmp_path / "runs" / "sft" / "last").is_dir()

    args = serve[2 : serve.index("--port")]  # start_server picks a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    monkeypatch.chdir(tmp_path)  # the page's relative paths
    proc, url = start_server(args, env, timeout=300)
    try:
        body = {"messages": [{"role": "user", "content": "I loved Heat (1995), any other crime films?"}], "k": 5}
        r = httpx.post(f"{url}/v1/recommend", json=body, timeout=300)
        assert r.status_code == 200, r.text
        catalog = pl.read_csv(tmp_path / "catalog.csv")
        titles = set(catalog["title"])
        items = r.json()["data"]
        assert len(items) == 5 and all(it["title"] in titles for it in items)  # a served list of catalog items
        assert "Heat" not in {it["title"] for it in items}  # what the user named is seen, not recommended
    finally:
        stop_server(proc)
