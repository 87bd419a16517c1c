"""The run folder shared by sft and rl: config, metrics.jsonl and what --resume keeps of it."""

import json

from convrec.train.runlog import RunLog


def test_resume_keeps_records_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    log = RunLog(tmp_path, {"lr": 1e-3}, resumed_step=None, main=True)
    for step in (1, 2, 3, 4):
        log({"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # the process was killed mid-write
    RunLog(tmp_path, {"lr": 1e-3}, resumed_step=2, main=True)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3}


def test_a_fresh_run_starts_an_empty_log_and_other_ranks_write_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    RunLog(tmp_path, {}, resumed_step=None, main=True)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    other = RunLog(tmp_path / "rank1", {}, resumed_step=None, main=False)
    other({"step": 1})
    assert not (tmp_path / "rank1").exists()
