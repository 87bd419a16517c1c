"""The vllm engine's parts that run without vLLM or a GPU: its catalog logits processor against the hf
engine's allowed sets, weight names for vLLM's loader (LoRA merged, tied head), per-rank engine
arguments, the reference model's dtype and the refusal where vLLM is missing."""

from __future__ import annotations

import enum
import random
from types import SimpleNamespace

import pytest
import torch

from convrec.data import open_catalog
from convrec.decoding.constrained import CatalogConstraints, RowConstraint
from convrec.models.load import load_model, load_tokenizer
from convrec.train import lora, vllm_constraints
from convrec.train.vllm_constraints import CatalogMaskProcessor
from convrec.train.vllm_engine import llm_kwargs, merged, request_seed, vllm_weights
from tests.conftest import assert_user_error, run_cli, tiny_world


class Direction(enum.Enum):  # vLLM's MoveDirectionality, by name
    UNIDIRECTIONAL = 1
    SWAP = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("vllm"))


def _update(removed=(), added=(), moved=()):
    return SimpleNamespace(batch_size=0, removed=list(removed), added=list(added), moved=list(moved))


def test_logits_processor_masks_what_the_hf_engine_allows(world):
    """A persistent batch as vLLM drives it (requests join, leave, move and swap rows, outputs grow in
    place): every constrained row's unmasked ids at every step are exactly `CatalogConstraints.replay`'s
    (what the hf engine allows and the loss normalises over), plain rows stay untouched, and the
    sampled lists are catalog lines with no seen or repeated item."""
    tok = load_tokenizer(world / "model")
    constraints = CatalogConstraints(tok, open_catalog(world / "data"))
    vllm_constraints.use_trie(constraints.trie)
    vocab, rng, gen = len(tok), random.Random(0), torch.Generator().manual_seed(0)
    specs = [constraints.row_constraint(3, [0, 1]), constraints.row_constraint(2), None, constraints.row_constraint(4)]
    outputs: list[list[int]] = [[] for _ in specs]
    proc = CatalogMaskProcessor(None, torch.device("cpu"), False)
    params = [SimpleNamespace(extra_args=vllm_constraints.extra_args(s) if s else None) for s in specs]
    slot = {0: 0, 1: 1, 2: 2}  # batch row -> request; request 3 joins later
    proc.update_state(_update(added=[(r, params[q], [5], outputs[q]) for r, q in slot.items()]))
    finished: set[int] = set()
    for step in range(60):
        if step == 3:  # request 3 joins at row 3, then rows 0 and 3 swap
            slot[3] = 3
            proc.update_state(_update(added=[(3, params[3], [7], outputs[3])]))
            slot[0], slot[3] = slot[3], slot[0]
            proc.update_state(_update(moved=[(0, 3, Direction.SWAP)]))
        logits = torch.randn(len(slot), vocab, generator=gen)
        masked = proc.apply(logits.clone())
        for row, q in list(slot.items()):
            if specs[q] is None:
                assert torch.equal(masked[row], logits[row])
                outputs[q].append(rng.randrange(vocab))
                continue
            constraints.replay(specs[q], outputs[q])  # every token so far was allowed where it was drawn
            expected = set(_next_allowed(constraints, specs[q], outputs[q]))
            assert set(torch.isfinite(masked[row]).nonzero().flatten().tolist()) == expected
            ids = sorted(expected)
            outputs[q].append(ids[int(torch.multinomial(torch.softmax(masked[row][ids], -1), 1, generator=gen))])
            if outputs[q][-1] == tok.eos_token_id:
                finished.add(q)
        for row, q in list(slot.items()):  # a finished request leaves; the last row moves into its place
            if q in finished:
                last = max(slot)
                del slot[row]
                if last != row:
                    slot[row] = slot.pop(last)
                    proc.update_state(_update(removed=[row], moved=[(last, row, Direction.UNIDIRECTIONAL)]))
                else:
                    proc.update_state(_update(removed=[row]))
                break
        else:
            proc.update_state(None)  # a plain step: only the outputs grew
        if not any(specs[q] is not None for q in slot.values()):
            break
    assert finished >= {0, 1, 3}
    for q in (0, 1, 3):
        text = tok.decode(outputs[q], skip_special_tokens=True)
        lines = [ln for ln in text.split("\n") if ln]
        labels = set(constraints.trie.labels)
        assert len(lines) == specs[q].k and set(lines) <= labels and len(set(lines)) == len(lines)
        assert not {constraints.trie.item_of_label[ln] for ln in lines} & specs[q].exclude


def _next_allowed(constraints, spec: RowConstraint, tokens: list[int]) -> list[int]:
    """What the hf side allows after ``tokens``: replay one more position with each candidate."""
    from convrec.decoding.constrained import RowState

    state = RowState(constraints.trie, spec)
    for t in tokens:
        state.advance(t)
    return state.next_ids(torch.device("cpu")).tolist()


def test_weights_reach_vllm_under_base_names_lora_merged_and_tied_head_left_out(world):
    base = load_model(world / "model")
    assert base.config.tie_word_embeddings
    model = lora.wrap(load_model(world / "model"), r=4, alpha=8, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    expected = lora.merged_copy(model).state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with merged(model) as m:  # the tensors are the live (merged) weights: read them inside
        got = {k: v.clone() for k, v in vllm_weights(m)}
    assert set(got) == set(base.state_dict()) - {"lm_head.weight"}
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in got)
    assert any(not torch.allclose(got[k], base.state_dict()[k]) for k in got)  # the adapters are in
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # unmerged again (to rounding)
    plain = dict(vllm_weights(base))
    assert set(plain) == set(got) and all(torch.equal(plain[k], base.state_dict()[k]) for k in plain)


def test_each_rank_gets_its_own_engine_and_seed(monkeypatch):
    args = {"gpu_memory_utilization": 0.25, "max_model_len": 900, "seed": 7, "sleep": True, "constrained": True}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    one = llm_kwargs("m", **args)
    assert "distributed_executor_backend" not in one and one["seed"] == 7 and one["enable_sleep_mode"]
    assert one["gpu_memory_utilization"] == 0.25 and one["max_model_len"] == 900
    assert one["logits_processors"] == [CatalogMaskProcessor]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    ranked = llm_kwargs("m", **{**args, "constrained": False})
    assert ranked["distributed_executor_backend"] == "external_launcher" and ranked["seed"] == 10
    assert "logits_processors" not in ranked
    torch.manual_seed(1)
    first = request_seed()
    torch.manual_seed(1)
    assert request_seed() == first != request_seed()  # drawn from the trainer's RNG: a resume repeats it


def test_reference_model_is_stored_in_the_compute_dtype(world, tmp_path):
    """bf16 compute: the frozen KL reference is held in bf16 (half the memory), the policy's weights in fp32."""
    from convrec.train.config import RLConfig
    from convrec.train.rl import _setup

    cfg = RLConfig(model=str(world / "model"), data=str(world / "data"), out=str(tmp_path / "r"), precision="bf16")
    cfg.check()
    run = _setup(cfg)
    assert run.model.dtype == torch.float32 and run.ref.dtype == torch.bfloat16


def test_vllm_engine_without_vllm_is_one_line(world, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    base = ["--model", world / "model", "--data", world / "data", "--out", tmp_path / "r", "--max-steps", "1"]
    assert_user_error(run_cli("rl", *base, "--engine", "vllm", "--constrained-rollouts"), "needs vLLM")
