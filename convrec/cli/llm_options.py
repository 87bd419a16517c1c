"""The flags every command that talks to an LLM shares (remap's teacher, reflect's judge), and the
one place they become an `LLMConfig`."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec.errors import ConvrecError

BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key.")
CONCURRENCY = typer.Option(8, "--concurrency", help="Requests in flight at once.")
TIMEOUT = typer.Option(60.0, "--timeout", help="Seconds per request before it is retried.")
RETRIES = typer.Option(6, "--max-retries", help="Retries per request on 429, 5xx, timeouts.")
BACKOFF = typer.Option(1.0, "--backoff", help="First retry delay in seconds (doubles, with jitter).")
MAX_CALLS = typer.Option(None, "--max-calls", help="Budget: at most this many HTTP requests in this run.")
CACHE = typer.Option(
    None, "--cache-dir", help="Response and embedding cache (default $CONVREC_CACHE_DIR or ~/.cache/convrec)."
)
USAGE = typer.Option(None, "--usage-log", help="JSONL usage log (default: next to --out).")
BATCH = typer.Option(
    False,
    "--batch",
    help="Send the requests as OpenAI Batch API jobs (half price, within 24 h); job ids are kept in "
    "OUT.batches/, so a rerun resumes them. Answers share the cache with online calls.",
)
BATCH_POLL = typer.Option(30.0, "--batch-poll", help="Seconds between status checks of running batch jobs.")
BATCH_MAX = typer.Option(
    50_000,
    "--batch-max-requests",
    help="Requests per batch job (the API allows 50,000; fewer keeps a job under an enqueued-token limit).",
)
DRY_RUN = typer.Option(
    False, "--dry-run", help="Print the requests, estimated tokens and cost the stage would send; send none."
)
PRICES = typer.Option(
    None,
    "--prices",
    help='JSON price table for --dry-run, {"model": {"input": USD, "output": USD}} per 1M tokens; '
    "adds to or overrides the built-in one.",
)


def llm_config(model: str, out: Path, opts: dict):
    """The LLM client settings from a command's shared options (its locals: base_url, api_key_env, ...);
    the key is checked now, so a missing one fails in one line before any work."""
    from convrec.llm import LLMClient, LLMConfig
    from convrec.llm.client import default_cache_dir

    cfg = LLMConfig(
        model=model,
        base_url=opts["base_url"],
        api_key_env=opts["api_key_env"],
        concurrency=opts["concurrency"],
        timeout=opts["timeout"],
        max_retries=opts["max_retries"],
        backoff=opts["backoff"],
        max_calls=opts["max_calls"],
        cache_dir=opts["cache_dir"] or default_cache_dir(),
        usage_log=opts["usage_log"] or Path(f"{out}.usage.jsonl"),
        batch=_backend(out, opts),
    )
    LLMClient(cfg)
    return cfg


def _backend(out: Path, opts: dict):
    """--dry-run counts and prices; --batch sends through the Batch API; neither: online (None)."""
    if opts.get("dry_run"):
        from convrec.llm.pricing import DryRun, load_prices

        return DryRun(load_prices(opts.get("prices")), batch=bool(opts.get("batch")))
    if opts.get("batch"):
        from convrec.llm.batch import MAX_REQUESTS, BatchConfig

        most = opts.get("batch_max_requests") or MAX_REQUESTS
        if most > MAX_REQUESTS:
            raise ConvrecError(f"--batch-max-requests must be at most {MAX_REQUESTS:,} (the API's limit), got {most}")
        return BatchConfig(Path(f"{out}.batches"), poll_s=opts.get("batch_poll") or 0.0, max_requests=most)
    return None


def dry_run_exits(command):
    """A command whose --dry-run stops at its first LLM call prints the estimate and exits 0."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from convrec.llm.pricing import DryRunDone

        try:
            return command(*args, **kwargs)
        except DryRunDone as done:
            from rich.table import Table

            from convrec.cli.common import console

            t = Table("what", "value", title="dry run: nothing was sent")
            for row in done.estimate.rows():
                t.add_row(*row)
            console.print(t)
            raise typer.Exit(0) from None

    return wrapper


def usage_rows(usage: dict | None) -> list[tuple[str, str]]:
    if not usage:
        return []
    return [
        ("LLM requests sent (retries incl.)", f"{usage['requests']:,}"),
        ("answers from cache", f"{usage['cached']:,}"),
        ("retries", f"{usage['retries']:,}"),
        ("tokens in / out", f"{usage['prompt_tokens']:,} / {usage['completion_tokens']:,}"),
    ]
