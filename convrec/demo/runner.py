"""Running the demo's plan: each step is the real `convrec` command (in this process, or under torchrun
with --nproc), the two RL runs side by side in child processes on 2+ cores. `OUT/demo.json` records
each finished step with its exact command line: a rerun skips steps whose command and outputs are
unchanged, reruns everything after the first one that changed, and continues a killed sft or rl run
with `--resume`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from rich.markup import escape

from convrec import artifacts
from convrec.demo import side_by_side
from convrec.demo.plan import Options, Step, argv, configured, plan
from convrec.errors import ConvrecError

STATE_FILE = "demo.json"


def run(opts: Options, console, root, restart: bool = False) -> dict:
    """Run (or continue) the plan with ``root``, the `convrec` click command tree (each step is
    ``root.main(words)``, as on the command line); returns the state: per-step seconds, the steps run
    now, the wall time."""
    runner = _Runner(opts, console, root, restart)
    parallel = opts.nproc == 1 and side_by_side.cores() >= 2
    for batch in batches(runner.steps, parallel):
        # a batch's steps are independent of each other: each is judged (and resumed) on what came before
        todo = [(step, words) for step in batch if (words := runner.prepare(step)) is not None]
        runner.changed = runner.changed or bool(todo)
        if len(todo) > 1:
            runner.side_by_side(todo)
        else:
            for step, words in todo:
                runner.in_process(step, words)
    return runner.close()


def batches(steps: list[Step], side_by_side: bool) -> list[list[Step]]:
    """The plan cut into runs of steps: adjacent steps sharing a `together` tag form one batch when
    ``side_by_side``, every other step is a batch of its own."""
    out: list[list[Step]] = []
    for step in steps:
        if side_by_side and out and step.together is not None and out[-1][-1].together == step.together:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def load_state(out: Path) -> dict:
    path = out / STATE_FILE
    if not path.exists():
        return {"steps": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), dict):
        raise ConvrecError(f"{path}: not a demo state file (delete it, or use another --out)")
    return state


class _Runner:
    """The plan, the state file, and the steps' bookkeeping: which are up to date, which run now."""

    def __init__(self, opts: Options, console, root, restart: bool):
        out = opts.out
        if out.exists() and not out.is_dir():
            raise ConvrecError(f"--out {out}: exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        self.opts, self.console, self.root, self.out = opts, console, root, out
        self.state = {"steps": {}} if restart else load_state(out)
        self.state["ran"] = []
        self.steps = plan(opts)
        self.index = {step.key: i for i, step in enumerate(self.steps, 1)}
        self.changed = False  # once a step reruns, every later step reruns too
        self.started = time.perf_counter()

    def prepare(self, step: Step) -> list[str] | None:
        """The step's command line, or None when it is up to date; prints its header either way."""
        from convrec.train import checkpoint

        words = argv(step, self.opts, self.root)
        done = self.state["steps"].get(step.key, {})
        # the command line names the config file, not its contents: the step's settings count too
        settings = json.loads(json.dumps(configured(self.opts, step.command), default=str))
        same = done.get("argv") == words and done.get("settings", {}) == settings
        up_to_date = not self.changed and same and done.get("ok") and all(p.exists() for p in step.outputs)
        self.console.rule(f"[bold][{self.index[step.key]}/{len(self.steps)}] {step.key}[/]: {escape(step.title)}")
        if up_to_date:
            self.console.print(f"[dim]up to date ({done['seconds']:.1f} s when it ran); skipped[/]")
            return None
        resume = not self.changed and step.run_dir is not None and same and checkpoint.has_state(step.run_dir / "last")
        self.state["steps"][step.key] = {"argv": words, "settings": settings, "ok": False, "seconds": 0.0}
        if resume:  # a killed sft/rl run with the same inputs and flags continues exactly
            words = [*words, "--resume"]
        self.console.print(f"[dim]$ convrec {escape(' '.join(words))}[/]", soft_wrap=True)
        self._save()
        return words

    def side_by_side(self, todo: list[tuple[Step, list[str]]]) -> None:
        """Child processes, each on its share of the cores, each logging to OUT/logs/STEP.log."""
        logs = [self.out / "logs" / f"{step.key}.log" for step, _ in todo]
        names, where = " and ".join(s.key for s, _ in todo), ", ".join(map(str, logs))
        self.console.print(f"[dim]{names} side by side; logs: {where}[/]")
        done = side_by_side.run([words for _, words in todo], logs)
        for (step, _), f in sorted(zip(todo, done, strict=True), key=lambda x: x[1].code != 0):
            self.finish(step, f.code, f.seconds, f.log)  # the runs that succeeded are recorded first
            self.console.print(f"{step.key}: {side_by_side.tail(f.log, 1)} ({f.seconds:.0f} s)", highlight=False)

    def in_process(self, step: Step, words: list[str]) -> None:
        """The step's command in this process (sft / rl under torchrun with --nproc > 1)."""
        from convrec.train import distributed

        t0 = time.perf_counter()
        try:
            if step.run_dir is not None and self.opts.nproc > 1:  # DeepSpeed from the config
                code = subprocess.run(distributed.torchrun_command(self.opts.nproc, *words)).returncode
            else:
                code = self.root.main(args=words, standalone_mode=False, prog_name="convrec")
        except ConvrecError as e:
            raise ConvrecError(
                f"demo step '{step.key}' failed: {e} (fix it, then rerun the same demo command to continue here)"
            ) from None
        self.finish(step, code, time.perf_counter() - t0)

    def finish(self, step: Step, code: int | None, seconds: float, log: Path | None = None) -> None:
        where = f" (log {log}: {side_by_side.tail(log)})" if log is not None else ""
        if code not in (None, 0):
            raise ConvrecError(f"demo step '{step.key}' exited with code {code}{where}")
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            raise ConvrecError(f"demo step '{step.key}' finished without writing {', '.join(missing)}{where}")
        self.state["steps"][step.key].update(ok=True, seconds=seconds)
        self.state["ran"].append(step.key)
        self._save()

    def close(self) -> dict:
        self.state["wall_seconds_this_run"] = time.perf_counter() - self.started
        self._save()
        return self.state

    def _save(self) -> None:
        artifacts.write_json(self.state, self.out / STATE_FILE)
