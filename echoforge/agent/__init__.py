"""The live voice agent: VAD → STT → RAG → LLM → TTS with barge-in (see :mod:`echoforge.agent.pipeline`).

Modules: ``frames`` (what flows), ``processors`` (the async base), ``vad`` / ``stt`` / ``rag``
(over ``rag_lexical``, ``rag_documents``) / ``llm`` / ``sentences`` / ``grounding`` (synchronous
building blocks), ``stage_vad`` / ``stage_stt`` / ``stage_llm`` / ``stage_sentences`` /
``stage_tts`` / ``stage_output`` (the pipeline's stages, one a module), ``latency`` (per-turn
stage times), ``pipeline`` (the assembly: :class:`~echoforge.agent.pipeline.VoiceAgent`),
``models`` (shared model loading), ``config`` (:class:`~echoforge.agent.config.AgentSettings`).
Nothing heavy is imported here.
"""
