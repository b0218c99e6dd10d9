"""FAISS retrieval indexes sized to the catalogue: exact inner product when small, HNSW when large.

For HNSW the recall@k against exact search is measured on sample queries at build time and reported,
so a bundle says how much accuracy its speed costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from tqdm import tqdm

from omnirec.domain.topk import top_k


@dataclass(frozen=True)
class IndexReport:
    """What was built and, for approximate indexes, its measured recall@k against exact search."""

    kind: str
    recall_at_k: float
    k: int
    queries: int

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, f"recall@{self.k}_vs_exact": self.recall_at_k, "queries": self.queries}


def build_index(vectors: np.ndarray, exact_max: int, hnsw_m: int = 32, ef_search: int = 128) -> faiss.Index:
    """Inner-product index over `vectors`: `IndexFlatIP` up to `exact_max` rows, `IndexHNSWFlat` above."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) <= exact_max:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(2 * hnsw_m, 64)
        index.hnsw.efSearch = ef_search
    index.add(vectors)
    return index


def measure_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> IndexReport:
    """Share of the exact top-k (by brute-force inner product) that the index returns, averaged over queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    exact = top_k(queries @ np.asarray(vectors, dtype=np.float32).T, k)
    _, found = index.search(queries, k)
    found_keys = np.sort(np.arange(len(queries))[:, None] * len(vectors) + found, axis=None)
    exact_keys = (np.arange(len(queries))[:, None] * len(vectors) + exact).ravel()
    pos = np.clip(np.searchsorted(found_keys, exact_keys), 0, len(found_keys) - 1)
    recall = float(np.mean(found_keys[pos] == exact_keys))
    kind = "exact_ip" if isinstance(index, faiss.IndexFlat) else "hnsw_ip"
    return IndexReport(kind=kind, recall_at_k=recall, k=k, queries=len(queries))


def top_lists(index: faiss.Index, queries: np.ndarray, k: int, batch: int = 20_000,
              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every query's top-k from `index`: item positions (int32, -1 where fewer exist) and scores (float32).

    Searched in batches, which FAISS spreads over its threads; the service then answers a known member
    with a row lookup instead of a graph search per request.
    """
    k = min(k, index.ntotal)
    items = np.full((len(queries), k), -1, dtype=np.int32)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    for lo in tqdm(range(0, len(queries), batch), desc="member top lists", unit="batch", disable=not progress):
        chunk = np.ascontiguousarray(queries[lo:lo + batch], dtype=np.float32)
        found_scores, found = index.search(chunk, k)
        items[lo:lo + len(chunk)] = found
        scores[lo:lo + len(chunk)] = found_scores
    return items, scores


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows (zero rows stay zero), so inner product is cosine similarity."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
