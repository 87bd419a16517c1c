"""The restricted output head: the same log-probabilities and gradients as the full head masked to the same ids."""

from __future__ import annotations

import pytest
import torch

from convrec.decoding.head import RestrictedHead
from convrec.models.load import load_model
from convrec.models.tiny import init_model
from convrec.train.logits import selected_logps


def random_allowed(tgt: torch.Tensor, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """Per scored token a random id set holding it (sizes 1 to 40), as a constrained walk would allow."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in tgt.tolist():
        k = int(torch.randint(0, 40, (1,), generator=g))
        out.append(torch.unique(torch.cat([torch.tensor([t]), torch.randint(0, vocab, (k,), generator=g)])))
    return out


def assert_restricted_equals_masked_full(model, ids: torch.Tensor, temperature: float = 0.7, atol: float = 1e-4):
    """selected_logps with ``allowed`` (restricted head) against the model's own full logits masked to the
    same ids: log-probabilities and every parameter's gradient."""
    attn = torch.ones_like(ids)
    score = torch.ones_like(ids, dtype=torch.bool)
    score[:, 0] = False
    where = score[:, 1:].nonzero(as_tuple=True)
    tgt = ids[:, 1:][where]
    vocab = model.get_output_embeddings().weight.shape[0]
    allowed = random_allowed(tgt, vocab)
    params = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    got, _ = selected_logps(model, ids, attn, score, temperature=temperature, allowed=allowed)
    got.sum().backward()
    got_grads = [p.grad.clone() for p in params]

    model.zero_grad()
    z = model(input_ids=ids, attention_mask=attn).logits[:, :-1][where].float() / temperature
    blocked = torch.ones_like(z, dtype=torch.bool)
    for r, a in enumerate(allowed):
        blocked[r, a] = False
    ref = torch.log_softmax(z.masked_fill(blocked, float("-inf")), -1).gather(-1, tgt[:, None]).squeeze(-1)
    ref.sum().backward()

    torch.testing.assert_close(got[:, 1:][where], ref, atol=atol, rtol=1e-4)
    for p, g in zip(params, got_grads, strict=True):
        # relative to the tensor's scale: Gemma's tied embedding sums input and output gradients (fp32 order noise)
        assert float((g - p.grad).norm()) <= 1e-4 * float(p.grad.norm()) + atol, "gradients differ"


def _tiny_model(tmp_path, tiny_data, item_tokens: bool):
    init_model(tiny_data, tmp_path / "m", item_tokens=item_tokens)
    return load_model(tmp_path / "m", dtype="float32")


@pytest.mark.parametrize("item_tokens", [False, True])
def test_restricted_head_equals_the_masked_full_head_on_the_tiny_model(tmp_path, tiny_data, item_tokens):
    model = _tiny_model(tmp_path, tiny_data, item_tokens)
    ids = torch.randint(0, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    assert_restricted_equals_masked_full(model, ids)


def test_restricted_logits_apply_the_softcap_and_temperature(tmp_path, tiny_data):
    """Gemma's final_logit_softcapping, c·tanh(z / c), then the temperature, over the chosen ids only."""
    model = _tiny_model(tmp_path, tiny_data, False)
    model.config.final_logit_softcapping = 2.0
    head = RestrictedHead(model)
    h = torch.randn(4, model.config.hidden_size)
    allowed = [torch.tensor([3, 5]), torch.tensor([5]), torch.tensor([0, 7, 9]), torch.tensor([1, 2, 3, 4])]
    scored = head.restricted(h, allowed, temperature=0.5)
    full = torch.tanh(model.get_output_embeddings()(h) / 2.0) * 2.0 / 0.5
    assert scored.ids.tolist() == [0, 1, 2, 3, 4, 5, 7, 9]
    for r, a in enumerate(allowed):
        col = scored.column(a)
        torch.testing.assert_close(scored.z[r, col], full[r, a])
        assert torch.isinf(scored.z[r]).sum() == len(scored.ids) - len(a)  # everything else masked
        torch.testing.assert_close(scored.log_softmax()[r, col], torch.log_softmax(full[r, a], -1))
