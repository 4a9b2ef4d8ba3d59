"""Documents for the knowledge base: which files count, their plain text, and chunks of it.

Owns reading a .md / .txt / .pdf file (:func:`read_document`) and splitting its text into
heading-carrying, overlapping chunks on paragraph and sentence boundaries (:func:`chunk_text`);
:class:`~echoforge.agent.rag.KnowledgeBase` embeds and indexes what comes out. Re-exported by
:mod:`echoforge.agent.rag`.
"""

from __future__ import annotations

import re
from pathlib import Path

SUFFIXES = (".md", ".txt", ".pdf")


def read_document(path: Path) -> str:
    """Plain text of a .md/.txt (UTF-8) or .pdf (pypdf) file."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        reader = PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    return path.read_text(encoding="utf-8", errors="replace")


def chunk_text(text: str, chunk_chars: int = 600, overlap: int = 100) -> list[str]:
    """Split text into chunks of at most ~``chunk_chars``, on paragraph then sentence boundaries.

    Markdown headings are carried into the chunks below them, so a chunk keeps its topic.
    Consecutive chunks share up to ``overlap`` characters of trailing sentences.
    """
    heading = ""
    pieces: list[tuple[str, str]] = []  # (heading, sentence-ish piece)
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", para)
        if m and len(para) < 200:
            heading = m.group(2).strip()
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para):
            while len(sent) > chunk_chars:  # a run-on "sentence" (tables, code): hard split
                pieces.append((heading, sent[:chunk_chars]))
                sent = sent[chunk_chars - overlap :]
            if sent:
                pieces.append((heading, sent))
        pieces.append((heading, "\n"))  # paragraph marker
    chunks: list[str] = []
    cur: list[str] = []
    cur_heading = ""

    def flush() -> None:
        body = " ".join(s for s in cur if s != "\n").strip()
        if body:
            chunks.append(f"{cur_heading}: {body}" if cur_heading else body)

    for head, piece in pieces:
        size = sum(len(s) + 1 for s in cur)
        if cur and (head != cur_heading or size + len(piece) > chunk_chars):
            flush()
            # Overlap: carry trailing sentences of the same section into the next chunk.
            carry: list[str] = []
            if head == cur_heading:
                for s in reversed(cur):
                    if s == "\n" or sum(len(c) + 1 for c in carry) + len(s) > overlap:
                        break
                    carry.insert(0, s)
            cur = carry
        cur_heading = head
        if piece != "\n" or cur:
            cur.append(piece)
    flush()
    return chunks
