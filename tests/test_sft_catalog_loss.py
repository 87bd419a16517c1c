"""sft --catalog-loss: list tokens normalised over the ids catalog-constrained decoding allows there."""

from __future__ import annotations

import json

import torch

from convrec.data import open_catalog
from convrec.decoding.constrained import CatalogConstraints
from convrec.models.load import load_model, load_tokenizer
from convrec.models.tiny import init_model
from convrec.train.logits import completion_loss
from convrec.train.sft_data import Encoded, batch_allowed, collate, with_catalog_allowed
from tests.conftest import run_cli


def _setup(tmp_path, tiny_data):
    init_model(tiny_data, tmp_path / "m")
    return load_tokenizer(tmp_path / "m"), load_model(tmp_path / "m", dtype="float32")


def _encoded(tok, targets: list[list[tuple[str, int]]]) -> Encoded:
    from convrec.listfmt import format_list
    from convrec.models.load import turn_end_id

    prompt = tok("a conversation", add_special_tokens=False)["input_ids"]
    completions = [tok(format_list(t), add_special_tokens=False)["input_ids"] + [turn_end_id(tok)] for t in targets]
    return Encoded([prompt] * len(targets), completions, 0)


def test_allowed_ids_follow_the_catalog_walk_and_fall_back_off_it(tmp_path, tiny_data):
    tok, _ = _setup(tmp_path, tiny_data)
    catalog = open_catalog(tiny_data)
    good = [("Dune", 2021), ("Elf", 2003)]
    off = [("Elf", 2003), ("Not A Film", 1990)]
    enc, share = with_catalog_allowed(tok, _encoded(tok, [good, off]), catalog, [2, 2])
    first, second_len = len(enc.completions[0]), len(enc.completions[1])
    assert first < share * (first + second_len) < first + second_len  # all of the first, part of the second
    full = len(tok)
    constraints = CatalogConstraints(tok, catalog)
    walk = constraints.replay(constraints.row_constraint(2), enc.completions[0])
    assert [a.tolist() for a in enc.allowed[0]] == [a.tolist() for a in walk]  # a catalog list: its whole walk
    second = enc.allowed[1]
    assert all(t in a.tolist() for t, a in zip(enc.completions[1], second, strict=True))
    assert len(second[-1]) == full and len(second[0]) < full  # restricted on "Elf", the vocabulary after


def test_catalog_loss_is_the_masked_full_loss(tmp_path, tiny_data):
    tok, model = _setup(tmp_path, tiny_data)
    enc, _ = with_catalog_allowed(
        tok, _encoded(tok, [[("Dune", 2021), ("Elf", 2003)], [("Fargo", 1996)]]), open_catalog(tiny_data), [2, 1]
    )
    batch = collate(enc, [0, 1], tok.pad_token_id)
    allowed = batch_allowed(enc, [0, 1])
    got, n = completion_loss(model, batch, allowed=allowed)
    standard, _ = completion_loss(model, batch)
    score = batch["labels"] != -100
    score[:, 0] = False
    where = score[:, 1:].nonzero(as_tuple=True)
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][where]
    blocked = torch.ones_like(z, dtype=torch.bool)
    for r, a in enumerate(allowed):
        blocked[r, a] = False
    tgt = batch["input_ids"][:, 1:][where]
    ref = -torch.log_softmax(z.masked_fill(blocked, float("-inf")), -1).gather(-1, tgt[:, None]).mean()
    assert n == len(allowed)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert float(got.detach()) < float(standard.detach())  # normalised over fewer ids: each token more likely


def test_sft_cli_trains_with_the_catalog_loss(tmp_path, tiny_data):
    init_model(tiny_data, tmp_path / "m")
    proc = run_cli(
        *("sft", "--data", tiny_data, "--model", tmp_path / "m", "--out", tmp_path / "run", "--catalog-loss"),
        *("--max-steps", "2", "--batch-size", "2", "--eval-every", "2", "--val-samples", "2", "--n-items", "3"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "of target tokens normalised over the catalog-allowed ids" in proc.stdout
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and "val_loss" not in r][-1] == 2
