"""Does the agent answer what it can and decline what it can't? The labelled set, scored.

Runs the agent's answer decision (retrieval with the real embedder, answer types, honest
declines; notes quoted as with the embedded model, so no LLM runs) on
``tests/agent/data/kb_questions.json`` over ``knowledge_base/`` and prints:

* answer recall — answerable questions whose reply contains the labelled fact;
* decline rate — unanswerable questions declined (near misses: on topic, no answer of that kind);
* decline precision — declines that were right (the question was unanswerable);
* invented — unanswerable questions that got a note's sentence as if it answered them.

Requests that are not questions of fact ("tell me a joke") go to the LLM without notes and are
listed as ``chat``, outside both rates.

Usage: ``python benchmarks/agent_grounding.py [--json]`` (ends with one JSON line).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


async def evaluate(kb: Any, questions: list[dict]) -> dict:
    """Score the answer decision on ``questions`` (``q``, ``source`` or None, ``fact``, ``near_miss``)."""
    from echoforge.agent.config import AgentSettings
    from echoforge.agent.conversation import Conversation
    from echoforge.agent.frames import LLMTextFrame, TranscriptionFrame
    from echoforge.agent.grounding import is_decline
    from echoforge.agent.pipeline import LLMProcessor
    from echoforge.agent.testing import FakeLLM, run_pipeline

    settings = AgentSettings(use_analysis=False, report_memory=False, answer_style="quote")
    rows = []
    for item in questions:
        llm = FakeLLM("(the model is never asked when the notes are quoted)", embedded=True)
        down, _ = await run_pipeline(
            LLMProcessor(llm, Conversation(), settings, kb=kb), [TranscriptionFrame(text=item["q"] + "?")]
        )
        reply = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
        declined = is_decline(reply) or not reply
        correct = bool(item.get("source")) and not declined and item["fact"].lower() in reply.lower()
        # A request that is not a question of fact ("tell me a joke") goes to the model, which is
        # told no notes match: neither an answer from the notes nor a decline.
        chat = bool(llm.calls)
        rows.append({"q": item["q"], "answerable": bool(item.get("source")), "near_miss": bool(item.get("near_miss")),
                     "reply": reply, "declined": declined, "correct": correct, "chat": chat})  # fmt: skip
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"] and not r["chat"]]
    near = [r for r in unanswerable if r["near_miss"]]
    declines = [r for r in rows if r["declined"]]

    def share(part: list, whole: list) -> float:
        return round(len(part) / len(whole), 4) if whole else 1.0

    return {
        "questions": len(rows),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "near_misses": len(near),
        "chat": [r["q"] for r in rows if r["chat"]],
        "answer_recall": share([r for r in answerable if r["correct"]], answerable),
        "decline_rate": share([r for r in unanswerable if r["declined"]], unanswerable),
        "near_miss_decline_rate": share([r for r in near if r["declined"]], near),
        "decline_precision": share([r for r in declines if not r["answerable"]], declines),
        "wrong_answers": [(r["q"], r["reply"]) for r in answerable if not r["correct"]],
        "wrong_declines": [r["q"] for r in declines if r["answerable"]],
        "invented": [(r["q"], r["reply"]) for r in unanswerable if not r["declined"]],
        "rows": rows,
    }


def main() -> None:
    from echoforge.agent.rag import Embedder, KnowledgeBase

    questions = json.loads((ROOT / "tests/agent/data/kb_questions.json").read_text())["questions"]
    with tempfile.TemporaryDirectory() as index:
        kb = KnowledgeBase(ROOT / "knowledge_base", index, Embedder())
        kb.build()
        t = time.perf_counter()
        result = asyncio.run(evaluate(kb, questions))
        seconds = time.perf_counter() - t
    print(f"{'question':55} {'label':12} reply")
    for r in result["rows"]:
        label = "answerable" if r["answerable"] else ("near miss" if r["near_miss"] else "unanswerable")
        mark = "ok" if (r["correct"] or (not r["answerable"] and r["declined"])) else ("chat" if r["chat"] else "WRONG")
        print(f"{r['q'][:55]:55} {label:12} {mark:5} {r['reply'][:90]}")
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["seconds"] = round(seconds, 2)
    print(json.dumps(summary) if "--json" in sys.argv else json.dumps({k: summary[k] for k in (
        "questions", "answer_recall", "decline_rate", "near_miss_decline_rate", "decline_precision", "seconds")}))  # fmt: skip


if __name__ == "__main__":
    main()
