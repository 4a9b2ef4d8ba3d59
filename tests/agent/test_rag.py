"""Knowledge base: chunking, PDF/MD/TXT reading, FAISS persistence, incremental rebuilds, relevance."""

from __future__ import annotations

import math
import os

import pytest

from echoforge.agent.rag import BM25, KnowledgeBase, chunk_text, read_document, tokenize


@pytest.fixture
def fresh_kb(tmp_path, models, helpers):
    """A new KB folder + index sharing the session's embedding model."""
    folder = helpers.write_kb(tmp_path / "kb")
    return KnowledgeBase(folder, tmp_path / "index", models.kb.embedder, chunk_chars=300, chunk_overlap=60)


def test_chunking_keeps_headings_sizes_and_overlap():
    text = "# Server\n\n" + " ".join(f"Sentence number {i} is about the server." for i in range(30)) + "\n\n# Voices\n\nVoices live in data."
    chunks = chunk_text(text, chunk_chars=200, overlap=60)
    assert len(chunks) > 4
    assert all(len(c) <= 200 + len("Server: ") + 50 for c in chunks)
    assert chunks[0].startswith("Server: ") and chunks[-1] == "Voices: Voices live in data."
    # Consecutive chunks of one section share a sentence (overlap).
    a, b = chunks[0], chunks[1]
    assert a.split(". ")[-1].rstrip(".") in b


def test_lexical_score_is_bm25_over_the_best_attainable():
    # bm25s + PyStemmer: stemmed, stop-word-free terms; dotted names stay one term.
    assert tokenize("Does any audio leave my machine? Set server.port") == ["audio", "leav", "machin", "set", "server.port"]
    docs = ["No audio leaves your machine.", "The server port is 8000.", "Voices live in the data folder."]
    bm25 = BM25(docs)
    idf = lambda df: math.log(1 + (3 - df + 0.5) / (df + 0.5))  # noqa: E731
    k1, b, avg = 1.2, 0.75, (4 + 3 + 4) / 3  # no audio leav machin | server port 8000 | …
    # "audio" and "machine" match doc 0 (4 terms) once each; "lighthouse" is unknown (largest IDF).
    tf_part = (k1 + 1) / (1 + k1 * (1 - b + b * 4 / avg))
    expected = 2 * idf(1) * tf_part / ((2 * idf(1) + idf(0)) * (k1 + 1))
    scores = bm25.scores("audio machine lighthouse")
    assert scores[0] == pytest.approx(expected, rel=1e-5) and scores[1] == scores[2] == 0
    assert bm25.scores("the").tolist() == [0, 0, 0] and 0 < bm25.scores("audio")[0] <= 1
    # Sentences scored with a bigger corpus's IDF (best_sentences): the same formula with that IDF.
    small = BM25(docs[:1])
    small.use_idf(bm25.idf, bm25.max_idf)
    assert small.scores("audio machine lighthouse")[0] == pytest.approx(
        2 * idf(1) * (k1 + 1) / (1 + k1) / ((2 * idf(1) + idf(0)) * (k1 + 1)), rel=1e-5
    )


def test_words_the_recogniser_splits_are_joined_to_the_notes_term():
    # Whisper writes "Echo Forge"; the notes say "EchoForge". Split, "echo" would match echo cancellation.
    bm25 = BM25(["EchoForge is a local-first voice platform.", "The browser keeps its echo cancellation on."])
    assert bm25.join_compounds("What is Echo Forge?") == "What is echoforge?"
    scores = bm25.scores("What is Echo Forge?")
    assert scores[0] > 0.3 and scores[1] == 0
    assert bm25.join_compounds("echo cancellation") == "echo cancellation"  # not a corpus term: unchanged


def test_reads_pdf_md_txt(tmp_path, helpers):
    helpers.make_pdf(tmp_path / "t.pdf", helpers.telescope_text)
    assert "Zephyr telescope" in read_document(tmp_path / "t.pdf")
    (tmp_path / "a.md").write_text("# T\n\nhello")
    assert "hello" in read_document(tmp_path / "a.md")


@pytest.mark.integration
def test_query_finds_the_right_source_and_scores(fresh_kb):
    report = fresh_kb.build()
    assert sorted(report.added) == ["bread.txt", "server.md", "telescope.pdf"]
    assert report.embedded_chunks == report.total_chunks > 0
    for question, source in [
        ("What port does the server use?", "server.md"),
        ("How long do I bake the sourdough loaf?", "bread.txt"),
        ("How big is the mirror of the Zephyr telescope?", "telescope.pdf"),
    ]:
        result = fresh_kb.query(question, 3)
        assert result.relevant, question
        assert result.passages[0].source == source, (question, result.passages)
        scores = [p.score for p in result.passages]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.integration
def test_irrelevant_query_means_fallback(fresh_kb):
    fresh_kb.build()
    result = fresh_kb.query("Tell me a joke about penguins", 3)
    assert result.fallback and not result.relevant
    assert result.passages and result.passages[0].score < fresh_kb.relevance_threshold


@pytest.mark.integration
def test_incremental_rebuild_touches_only_changed_files(fresh_kb, tmp_path):
    first = fresh_kb.build()
    total = first.total_chunks
    # Nothing changed: nothing embedded.
    again = fresh_kb.build()
    assert again.embedded_chunks == 0 and sorted(again.unchanged) == ["bread.txt", "server.md", "telescope.pdf"]
    # Touched but identical content: the hash says unchanged.
    server = fresh_kb.kb_dir / "server.md"
    st = server.stat()
    os.utime(server, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert fresh_kb.build().embedded_chunks == 0
    # One file edited: only its chunks are re-embedded, and the new fact is found.
    server.write_text("# The EchoForge server\n\nThe EchoForge server listens on port 9123 by default.\n")
    report = fresh_kb.build()
    assert report.updated == ["server.md"] and report.added == [] and report.removed == []
    assert sorted(report.unchanged) == ["bread.txt", "telescope.pdf"]
    assert report.embedded_chunks == 1
    top = fresh_kb.query("Which port does the server listen on?", 1).passages[0]
    assert top.source == "server.md" and "9123" in top.text
    # A deleted file loses its vectors; a new file is added.
    (fresh_kb.kb_dir / "bread.txt").unlink()
    (fresh_kb.kb_dir / "notes.txt").write_text("The office plant is called Gerald.")
    report = fresh_kb.build()
    assert report.removed == ["bread.txt"] and report.added == ["notes.txt"] and report.embedded_chunks == 1
    assert all(p.source != "bread.txt" for p in fresh_kb.query("sourdough bread baking", 5).passages)
    assert report.total_chunks < total + 1


@pytest.mark.integration
def test_index_persists_across_instances(fresh_kb, tmp_path):
    fresh_kb.build()
    reloaded = KnowledgeBase(fresh_kb.kb_dir, fresh_kb.index_dir, fresh_kb.embedder, chunk_chars=300, chunk_overlap=60)
    report = reloaded.build()
    assert report.embedded_chunks == 0 and len(report.unchanged) == 3
    assert reloaded.query("What port does the server use?", 1).passages[0].source == "server.md"
    # Different chunking settings invalidate the persisted index (full rebuild).
    other = KnowledgeBase(fresh_kb.kb_dir, fresh_kb.index_dir, fresh_kb.embedder, chunk_chars=500, chunk_overlap=60)
    assert other.build().embedded_chunks > 0


@pytest.mark.integration
def test_answer_selection_encodes_only_the_question_once_the_notes_are_warm(fresh_kb):
    from echoforge.agent.rag import best_sentences

    fresh_kb.build()
    question = "What port does the server use?"
    passages = fresh_kb.query(question, 3).passages
    cold = best_sentences(fresh_kb, question, passages, 3, ordered=True)
    assert fresh_kb.warm_sentences() > 0
    encoded: list[list[str]] = []
    encode = fresh_kb.embedder.encode
    fresh_kb.embedder.encode = lambda texts: encoded.append(list(texts)) or encode(texts)
    try:
        warm = best_sentences(fresh_kb, question, passages, 3, ordered=True)
    finally:
        del fresh_kb.embedder.encode
    assert encoded == [[question]]  # the notes' sentences came from the cache
    assert warm == cold  # and rank exactly as when encoded afresh


def test_sentences_are_scored_without_length_normalisation():
    # A long sentence that lists the answer is not diluted by its length (b=0 for sentences).
    from echoforge.agent.rag import Passage, best_sentences

    text = (
        "Voices: Five voices ship: atlas, an even friendly voice; orion, a low narrator; rowan, a bright one; "
        "juniper, a warm voice; and maple, a calm one. New voices ship with each release of the server."
    )
    best = best_sentences(None, "which voices ship", [Passage("v.md", text, 1.0, 0)], 1)
    assert best[0][1].startswith("Five voices ship")


def test_glossary_keeps_the_names_a_recogniser_cannot_spell():
    from echoforge.agent.rag_lexical import glossary

    notes = [
        "Intro: EchoForge runs SmolLM2-135M-Instruct on the CPU. Connect Ollama or vLLM instead.",
        "EchoForge speaks with Piper. The piper binary is not needed. Set ECHOFORGE_SERVER__PORT to move it.",
        "Voices: The calm British voice is Maple. Every voice lives in data.",
    ]
    terms = glossary(notes)
    assert terms[0] == "EchoForge"  # the most frequent first
    assert {"SmolLM2", "CPU", "Ollama", "vLLM", "Maple", "British"} <= set(terms)
    assert "Piper" not in terms  # the notes also write "piper": Whisper spells it from sound
    assert not any("_" in t for t in terms) and "Intro" not in terms and "Voices" not in terms
    assert glossary(notes, limit=2) == terms[:2]
