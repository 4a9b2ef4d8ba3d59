"""The live voice agent: VAD → STT → RAG → LLM → TTS with barge-in (see :mod:`echoforge.agent.pipeline`).

Modules: ``frames`` (what flows), ``processors`` (the async base), ``vad`` / ``stt`` / ``rag`` /
``llm`` / ``sentences`` (synchronous building blocks), ``pipeline`` (the stages and
:class:`~echoforge.agent.pipeline.VoiceAgent`), ``models`` (shared model loading), ``config``
(:class:`~echoforge.agent.config.AgentSettings`). Nothing heavy is imported here.
"""
