"""One Rank-GRPO step (mu 2, two micro-batches per process) on rollouts fixed in advance, through
`rl`'s own setup, reference, optimisation and checkpoint code; run by tests/test_distributed.py in one
process (plain AdamW) and under torchrun (ZeRO-2). Usage: DATA MODEL OUT PROMPTS_PER_STEP [DS_CONFIG]."""

from __future__ import annotations

import sys

from convrec.decoding.generate import encode_prompts
from convrec.train import rl
from convrec.train.config import RLConfig

GROUP = 2


class FixedLists:
    """Rollouts independent of each process's RNG (so one process and two sample the same lists): member
    j of a group lists catalog rows from an offset that depends on j, the first with the conversation's
    first ground-truth item on top, so rewards differ within every group."""

    def __init__(self, tokenizer, catalog, firsts: dict[tuple[int, ...], str], n: int, stop: int):
        self.tokenizer, self.catalog, self.firsts, self.n, self.stop = tokenizer, catalog, firsts, n, stop

    def generate(self, prompts, cfg, rows=None):
        out = []
        for p in prompts:
            for j in range(cfg.group_size):
                lines = [self.catalog.label((len(p) + 3 * j + k) % len(self.catalog)) for k in range(self.n)]
                if j == 0:
                    lines[0] = self.firsts[tuple(p)]
                text = "".join(f"{line}\n" for line in lines)
                out.append(self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.stop])
        return out

    def sync_weights(self, model) -> None:
        pass


def main(data: str, model: str, out: str, prompts: str, ds: str | None = None) -> None:
    cfg = RLConfig(
        model=model, data=data, out=out, group_size=GROUP, prompts_per_step=int(prompts), micro_batch_size=2,
        mu=2, max_steps=1, lr=1e-3, beta=0.04, n_items=4, val_samples=2, deepspeed=ds, seed=5,
    )  # fmt: skip
    cfg.check()
    run = rl._setup(cfg)
    index = rl._next_prompts(run)
    encoded = encode_prompts(run.tokenizer, [run.messages[i] for i in index], cfg.n_items, cfg.max_prompt_tokens)
    firsts = {tuple(p): f"{run.gts[i][0][0]} ({run.gts[i][0][1]})" for p, i in zip(encoded, index, strict=True)}
    stop = run.sampling.stop_ids[0]
    run.rollout_engine = FixedLists(run.tokenizer, run.catalog, firsts, cfg.n_items, stop)
    ro = rl._roll_out(run, index)
    _, _, adv = rl._advantages(run, ro.scored)
    assert float(adv.abs().sum()) > 0  # the lists' rewards differ: the policy term has a gradient
    rl._optimise(run, ro, adv, rl._reference_logps(run, ro))
    run.step = 1
    run.ckpt.save(1, lambda: {"ndcg@20": 0.0})  # RUN/last, as a run writes it


if __name__ == "__main__":
    main(*sys.argv[1:])
