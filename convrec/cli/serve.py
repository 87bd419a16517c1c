"""`convrec serve`: load a model and a catalog, then serve them over HTTP until interrupted."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer

from convrec.cli.choices import WeightPrecision, weight_dtype
from convrec.cli.common import console, renamed
from convrec.errors import ConvrecError


def serve_command(
    model: str = typer.Option(..., "--model", help="Model folder (e.g. RUN/best) or hub id."),
    data: Path = typer.Option(
        ..., "--data", help="Data folder holding catalog.parquet (and matching.json), or a catalog Parquet file."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Name of an environment variable holding the API key clients must send as Bearer."
    ),
    model_name: str = typer.Option("convrec", "--model-name", help="The model id clients ask for."),
    n_items: int = typer.Option(20, "--n-items", min=1, help="List length the prompt asks for (as in training)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most requests generated together."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0, help="How long a batch waits to fill."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting requests beyond which the server says 503."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Per-request time limit in seconds (then 504)."),
    max_k: int = typer.Option(100, "--max-k", min=1, help="Largest k a request may ask for."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="Largest max_tokens a request may ask for."),
    max_prompt_tokens: int = typer.Option(768, "--max-prompt-tokens", min=16, help="Longer prompts lose old turns."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="Largest request body (then 413)."),
    precision: WeightPrecision | None = typer.Option(
        None, "--precision", help="Weights in memory: fp32, bf16 or fp16 (default: as saved)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Torch CPU threads (default: all cores but one, left to the HTTP side)."
    ),
    _catalog: str | None = renamed("--catalog", "--data"),
    _dtype: str | None = renamed("--dtype", "--precision"),
) -> None:
    """Serve a recommender: OpenAI-compatible /v1/chat/completions, /v1/recommend and a web page at /.

    Every route lists catalog items only (constrained decoding) unless a request sends "constrained": false.

    Example: convrec serve --model out/demo/runs/rank_grpo/last --data out/demo/data --port 8000
    """
    dtype = weight_dtype(precision)
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise ConvrecError(f"--api-key-env {api_key_env}: that environment variable is unset or empty")
    _check_port(host, port)

    import torch
    import uvicorn

    from convrec.data import open_catalog
    from convrec.models.load import load_model, load_tokenizer
    from convrec.serve.app import ServeSettings, create_app
    from convrec.serve.engine import Engine

    # more threads than free cores makes CPU decoding many times slower, not faster
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
    cat = open_catalog(data, allow_file=True)  # a data folder's (or catalog file's folder's) matching rules
    with console.status("loading the model"):
        tok, mdl = load_tokenizer(model), load_model(model, dtype=dtype)
        engine = Engine(
            mdl,
            tok,
            cat,
            n_items=n_items,
            max_prompt_tokens=max_prompt_tokens,
            max_batch=max_batch,
            batch_wait_s=batch_wait_ms / 1000,
            max_queue=max_queue,
        )
    settings = ServeSettings(
        model_name=model_name,
        api_key=api_key,
        timeout_s=timeout,
        max_k=max_k,
        max_tokens=max_tokens,
        max_body_bytes=max_body_bytes,
    )
    app = create_app(engine, settings)
    auth = f"Bearer key from ${api_key_env}" if api_key else "no API key"
    console.print(
        f"serving '{model_name}' ({model}) with {len(cat):,} catalog items on http://{host}:{port} ({auth})",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def _check_port(host: str, port: int) -> None:
    """A taken port is a one-line user error before minutes of model loading, not a uvicorn traceback after."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConvrecError(f"--host {host}: cannot resolve that address") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ConvrecError(f"cannot listen on {host}:{port}: {e.strerror}") from None
