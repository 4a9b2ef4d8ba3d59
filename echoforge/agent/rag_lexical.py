"""Lexical scoring for retrieval: the tokenizer and :class:`BM25` with scores normalised to 0..1.

Owns the one term rule of the knowledge base (bm25s's tokenizer over PyStemmer's Snowball stems,
stop words out, ``server.port`` kept whole) and Okapi BM25 over a small in-memory corpus: a
knowledge base's chunks (:mod:`echoforge.agent.rag`) or a few passages' sentences
(:func:`echoforge.agent.rag.best_sentences`, with the knowledge base's IDF). The grounding checks
(:mod:`echoforge.agent.grounding`) compare words through :func:`tokenize` too. Re-exported by
:mod:`echoforge.agent.rag`.
"""

from __future__ import annotations

import re
import threading

import numpy as np

_WORD = r"[a-z0-9]+(?:[._][a-z0-9]+)*"  # ``server.port`` and ``v1.2`` stay one term
_STOP = sorted(
    "a an and are as at be but by can could do does did for from had has have how i if in into is it its "
    "me my of on or our should so than that the their them then there these they this to was we were what "
    "when where which while who whom why will with would you your yours about any some tell please".split()
)
_stemmers = threading.local()  # PyStemmer objects are not thread-safe: one per thread


def _stemmer():
    if not hasattr(_stemmers, "stemmer"):
        import Stemmer

        _stemmers.stemmer = Stemmer.Stemmer("english")
    return _stemmers.stemmer


def _tokenize(texts: list[str], return_ids: bool):
    import bm25s

    return bm25s.tokenize(
        texts, token_pattern=_WORD, stopwords=_STOP, stemmer=_stemmer(), return_ids=return_ids, show_progress=False
    )


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, Snowball-stemmed terms (bm25s's tokenizer with PyStemmer).

    leaves/leave → leav, voices/voice → voic, running → run; ``server.port`` stays one term.
    """
    return _tokenize([text], return_ids=False)[0]


class BM25:
    """Okapi BM25 (``bm25s``) over a small in-memory corpus, with scores normalised to 0..1.

    The normalised score is ``bm25 / Σ_q idf(q)·(k1 + 1)`` over the question's terms, where a
    term the corpus never uses counts with the largest possible IDF: a question about something
    absent ("the lighthouse in the harbour") cannot score high just because one common word
    ("harbour"?) matched. bm25s scores with the ATIRE term-frequency part ``tf·(k1+1) / (tf + norm)``
    (at most ``k1 + 1``) and the Lucene IDF ``log(1 + (N − df + 0.5) / (df + 0.5))``; the IDF of
    each term is recomputed from the document frequencies held in bm25s's sparse index.
    """

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s

        self.k1, self.b = k1, b
        self.n = len(docs)
        self._index = bm25s.BM25(k1=k1, b=b, method="atire", idf_method="lucene")
        self.vocab: dict[str, int] = {}
        self.idf: dict[str, float] = {}
        self._idf = np.zeros(0, dtype=np.float32)
        if self.n:
            corpus = _tokenize(docs, return_ids=True)
            if corpus.vocab:
                self._index.index(corpus, create_empty_token=False, show_progress=False)
                self.vocab = self._index.vocab_dict
                df = np.diff(self._index.scores["indptr"])  # docs per term (every stored score is > 0)
                self._idf = self._idf_of(df)
                self.idf = {t: float(self._idf[i]) for t, i in self.vocab.items()}
        self.max_idf = float(self._idf_of(np.zeros(1))[0])

    def _idf_of(self, df: np.ndarray) -> np.ndarray:
        return np.log(1 + (self.n - df + 0.5) / (df + 0.5)).astype(np.float32)

    def use_idf(self, idf: dict[str, float], max_idf: float) -> None:
        """Score with another corpus's IDF (a knowledge base's, for its sentences); unknown terms get ``max_idf``."""
        if self.vocab:
            new = np.asarray([idf.get(t, max_idf) for t in sorted(self.vocab, key=self.vocab.get)], np.float32)
            per_entry = np.repeat(new / self._idf, np.diff(self._index.scores["indptr"]))
            self._index.scores["data"] = (self._index.scores["data"] * per_entry).astype(np.float32)
            self._idf = new
        self.idf, self.max_idf = dict(idf), max_idf

    def join_compounds(self, query: str) -> str:
        """Adjacent words whose concatenation is a term of the corpus, joined: the recogniser writes
        "Echo Forge", "web socket", "make file" where the notes say EchoForge, WebSocket, Makefile."""
        words = query.split()
        if len(words) < 2 or not self.vocab:
            return query
        out: list[str] = []
        i = 0
        while i < len(words):
            if i + 1 < len(words):
                a, b = (re.sub(r"\W+", "", w.lower()) for w in words[i : i + 2])
                joined = tokenize(a + b) if a and b and a.isalpha() and b.isalpha() else []
                if len(joined) == 1 and joined[0] in self.vocab and tokenize(f"{a} {b}") != joined:
                    out.append(a + b + re.sub(r"^.*?(\W*)$", r"\1", words[i + 1]))  # keep trailing punctuation
                    i += 2
                    continue
            out.append(words[i])
            i += 1
        return " ".join(out)

    def scores(self, query: str) -> np.ndarray:
        """(n_docs,) normalised scores in 0..1."""
        terms = tokenize(self.join_compounds(query))
        out = np.zeros(self.n, dtype=np.float32)
        if not terms or not self.n:
            return out
        best = sum(self.idf.get(t, self.max_idf) for t in terms) * (self.k1 + 1)
        ids = [self.vocab[t] for t in terms if t in self.vocab]
        if ids:
            out = np.asarray(self._index.get_scores(ids), dtype=np.float32)
        return out / best if best > 0 else out


_TERM = re.compile(r"[A-Za-z][\w.+-]*[\w+]|[A-Za-z]")


def glossary(texts: list[str], limit: int = 20) -> list[str]:
    """The names and terms of ``texts`` that a recogniser cannot spell from their sound, most frequent first.

    CamelCase and mixed letter-digit words (EchoForge, SmolLM2, CSM-1B → CSM), acronyms (GPU), and
    capitalised words after a sentence's first that the texts never write in lower case (Piper,
    Ollama). Whisper given them as its prompt writes "EchoForge" and "Ollama" where it heard
    "Echo Fort" and "Alama" — and retrieval finds the notes that name them.
    """
    counts: dict[str, int] = {}
    lower: set[str] = set()
    for text in texts:
        lower.update(re.findall(r"\b[a-z][a-z'-]*\b", text))
        for sentence in re.split(r"(?<=[.!?:])\s+|\n+", text):
            for i, word in enumerate(_TERM.findall(sentence)):
                if "_" in word or len(word) < 3:
                    continue
                head = word.split("-")[0]
                if "-" in word and len(head) >= 3 and _special(head):
                    word = head  # SmolLM2-135M-Instruct → SmolLM2, CSM-1B → CSM
                if _special(word) or (i > 0 and word[0].isupper() and word.lower() not in lower):
                    counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda w: -counts[w])
    return [w for w in ranked if len(w) <= 24][:limit]


def _special(word: str) -> bool:
    """CamelCase, letters with digits, or an acronym: a spelling no one hears."""
    return bool(re.search(r"[a-z][A-Z]|[A-Z]{2}|[A-Za-z]\d|\d[A-Za-z]", word))

