"""Training precision (fp32 master weights, bf16 autocast by choice) and the chunked log-probabilities."""

import pytest
import torch

from convrec.errors import ConvrecError
from convrec.models.load import load_model
from convrec.train import precision
from convrec.train.logits import completion_loss, selected_logps
from tests.conftest import run_cli

LR = 1e-6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The synthetic world, the tiny student, and the same student saved in bf16 (as hub checkpoints are)."""
    from convrec.data.synth import generate
    from convrec.models.load import load_tokenizer
    from convrec.models.tiny import init_model

    root = tmp_path_factory.mktemp("precision")
    generate(root / "data", seed=0)
    init_model(root / "data", root / "model")
    model = load_model(root / "model").to(torch.bfloat16)
    model.save_pretrained(root / "bf16")
    load_tokenizer(root / "model").save_pretrained(root / "bf16")
    return root


def _weights(folder) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in load_model(folder).state_dict().items()}


def _moved_by_lr(before: dict, after: dict, name: str) -> float:
    """Share of a matrix's entries that moved by lr (±2 %): Adam's first step is lr·g/(|g| + ε) ≈ ±lr."""
    delta = (after[name] - before[name]).abs()
    return float(((delta - LR).abs() < 0.02 * LR).float().mean())


def test_sft_keeps_fp32_masters_so_a_1e6_step_moves_bf16_weights(setup, tmp_path):
    before = _weights(setup / "bf16")
    assert load_model(setup / "bf16").dtype == torch.bfloat16
    run = tmp_path / "run"
    proc = run_cli(
        *("sft", "--data", setup / "data", "--model", setup / "bf16", "--out", run, "--max-steps", "1"),
        *("--lr", str(LR), "--warmup-ratio", "0", "--batch-size", "4", "--eval-every", "1", "--val-samples", "2"),
    )
    assert proc.returncode == 0, proc.stderr
    assert load_model(run / "last").dtype == torch.float32  # the trained weights are the fp32 masters
    after = _weights(run / "last")
    # bf16 holds 8 mantissa bits: at |w| ≈ 0.02 its spacing is ~1e-4, so a 1e-6 step on bf16 weights is lost
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"):
        assert _moved_by_lr(before, after, name) > 0.95, name


def test_rl_trains_fp32_masters(setup, tmp_path):
    before = _weights(setup / "bf16")
    run = tmp_path / "rl"
    proc = run_cli(
        *("rl", "--model", setup / "bf16", "--data", setup / "data", "--out", run, "--max-steps", "1"),
        *("--lr", str(LR), "--group-size", "2", "--prompts-per-step", "2", "--micro-batch-size", "4"),
        *("--eval-every", "1", "--val-samples", "1", "--max-new-tokens", "24", "--beta", "0", "--n-items", "3"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_model(run / "last").dtype == torch.float32
    after = _weights(run / "last")
    # an untrained student earns no reward, so the step's gradient is zero and Adam leaves the weights
    # exactly where they were: the fp32 masters hold the bf16 values, upcast without change
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resolve_choices():
    assert precision.resolve("fp32").compute is None
    assert precision.resolve("bf16", device="cpu").compute == torch.bfloat16
    tiny = torch.nn.Linear(4, 4)  # far below AUTO_CPU_MIN_PARAMS: fp32 measured faster
    assert precision.resolve("auto", tiny, device="cpu").compute is None
    with pytest.raises(ConvrecError, match="choose one of auto, fp32, bf16"):
        precision.resolve("fp16")
    with precision.resolve("bf16", device="cpu").autocast():
        assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(4, 4)).dtype == torch.bfloat16
    assert precision.training_dtype() == "float32"
    assert precision.training_dtype({"bf16": {"enabled": True}}) is None  # DeepSpeed keeps its own fp32 copy
    assert precision.training_dtype({"bf16": {"enabled": False}}) == "float32"


def test_chunked_logps_equal_the_full_logits(setup):
    """Loss, gradients, temperature-scaled log-probs and entropy agree with the model's own full logits."""
    model = load_model(setup / "model", dtype="float32").train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (3, 40), generator=g)
    attn = torch.ones_like(ids)
    attn[1, -5:] = 0  # right padding
    labels = ids.clone()
    labels[:, :25] = -100
    labels[1, -5:] = -100
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}

    ref = model(**batch).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, n = completion_loss(model, batch)
    loss.backward()
    assert n == int((labels[:, 1:] != -100).sum())
    assert torch.allclose(loss, ref, atol=1e-5)
    for a, p in zip(ref_grads, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)

    score = labels != -100
    logp, ent = selected_logps(model, ids, attn, score, temperature=0.5, entropy=True, rows=7)  # several chunks
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / 0.5, -1)
    want = full.gather(-1, ids[:, 1:, None]).squeeze(-1) * score[:, 1:]
    assert torch.allclose(logp[:, 1:], want, atol=1e-5) and (logp[:, 0] == 0).all()
    want_ent = -(full.exp() * full).sum(-1) * score[:, 1:]
    assert torch.allclose(ent[:, 1:], want_ent, atol=1e-4)

    # masked: normalised over each position's allowed ids only (constrained rollouts), across chunks
    where = score[:, 1:].nonzero(as_tuple=True)
    tgt = ids[:, 1:][where]
    vocab = full.shape[-1]
    allowed = [torch.unique(torch.cat([t[None], torch.randint(0, vocab, (5,), generator=g)])) for t in tgt]
    model.zero_grad()
    logp, ent = selected_logps(model, ids, attn, score, temperature=0.5, entropy=True, rows=7, allowed=allowed)
    logp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    z = full[where]  # log_softmax over the vocabulary; renormalising over a subset is the same as over logits
    for i, (a, t) in enumerate(zip(allowed, tgt.tolist(), strict=True)):
        sub = torch.log_softmax(z[i, a], -1)
        b, col = where[0][i], where[1][i] + 1
        assert torch.allclose(logp[b, col], sub[(a == t).nonzero()[0, 0]], atol=1e-5)
        assert torch.allclose(ent[b, col], -(sub.exp() * sub).sum(), atol=1e-4)
    with pytest.raises(ValueError, match="allowed has"):
        selected_logps(model, ids, attn, score, allowed=allowed[:-1])
