"""The voice stays the voice: pinned voice prompts survive a full window, stereo references are
downmixed (not flattened), over-long references are trimmed with a log line (issue 13, item 3)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from echoforge.csm import Segment

SR = 24_000


def codes(frames: int, value: int) -> torch.Tensor:
    return torch.full((frames, 32), value, dtype=torch.long)


def speech_like(seconds: float, seed: int = 0, f0: float = 180.0) -> np.ndarray:
    """Syllable-like bursts (200 ms on, 100 ms off) of a harmonic tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    gate = ((t % 0.3) < 0.2).astype(np.float64)
    return (0.3 * tone * gate + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


# ----------------------------------------------------------------------------- the window


def test_full_window_keeps_the_pinned_voice_prompt_and_drops_the_oldest_turns(tiny_generator, caplog):
    gen = tiny_generator
    voice = Segment(0, "this is how i sound", codes(150, 7), pinned=True)
    turns = [Segment(i % 2, f"generated turn {i}", codes(300, 10 + i)) for i in range(8)]  # 8 x 300 > 2048
    with caplog.at_level(logging.WARNING, logger="echoforge.csm"):
        tokens, mask, frames = gen.build_prompt("hello there", 0, [voice, *turns], max_frames=100)
    assert "dropped the" in caplog.text and "kept the voice prompt" in caplog.text
    assert frames == 100 and tokens.shape[0] + frames <= gen.window

    v_tok, v_mask = gen.prompts.segment_rows(voice)
    assert torch.equal(tokens[: v_tok.shape[0]], v_tok)  # the voice prompt leads the prompt, whole
    assert torch.equal(mask[: v_mask.shape[0]], v_mask)
    # what follows is exactly the newest turns (a suffix of the conversation), then the text
    rest = tokens[v_tok.shape[0] :]
    kept = [n for n in range(len(turns)) if bool((rest[:, 0] == 10 + n).any())]
    assert kept and kept == list(range(kept[0], len(turns))) and kept[0] > 0
    expected = torch.cat([gen.prompts.segment_rows(t)[0] for t in turns[kept[0] :]] + [gen.prompts.text_rows(0, "hello there")[0]])
    assert torch.equal(rest, expected)
    # the same overflow with an unpinned first segment still drops that one first (old behaviour)
    tokens2, _, _ = gen.build_prompt("hello there", 0, [Segment(0, "x", codes(150, 7)), *turns], max_frames=100)
    assert not bool((tokens2[:, 0] == 7).any())


def test_voice_prompt_alone_too_big_is_shortened_not_raised(tiny_generator, caplog, monkeypatch):
    gen = tiny_generator
    monkeypatch.setattr(gen, "max_reference_s", 0, raising=False)  # no reference limit: only the window
    voice = Segment(0, "word " * 40, codes(1990, 7), pinned=True)
    with caplog.at_level(logging.WARNING, logger="echoforge.csm"):
        tokens, _, frames = gen.build_prompt("hello", 0, [voice, Segment(1, "older", codes(5, 9))], max_frames=100)
    assert frames == 100 and tokens.shape[0] + frames <= gen.window
    assert bool((tokens[:, 0] == 7).any()) and not bool((tokens[:, 0] == 9).any())
    assert "shortened it" in caplog.text
    with pytest.raises(ValueError, match="too long"):  # text alone that cannot fit still raises
        gen.build_prompt("hello " * 2100, 0, [voice], max_frames=10)


def test_long_text_pieces_all_keep_the_voice_prompt(tiny_generator, monkeypatch):
    """Pieces continue in their KV slot; when the window overflows mid-request, the rebuilt
    prompt still starts with the voice prompt and drops the oldest turns instead."""
    gen = tiny_generator
    seen: list[tuple[str, torch.Tensor]] = []
    real = gen.prompts.build

    def spy(text, speaker, context, max_frames):
        out = real(text, speaker, context, max_frames)
        seen.append((text, out[0]))
        return out

    monkeypatch.setattr(gen.prompts, "build", spy)
    monkeypatch.setattr(gen, "max_piece_chars", 20)
    voice = Segment(0, "my voice", codes(100, 7), pinned=True)
    # older unpinned turns: the first prompt just fits, the pieces fed back overflow the window
    history = [Segment(1, f"old turn {i}", codes(600, 20 + i)) for i in range(3)]
    text = "hello world. how are you today? i am fine thanks. see you soon."
    out = gen.generate_codes(text, context=[voice, *history], max_audio_length_ms=150 * 80, temperature=0)
    assert out.shape[0] > 45  # more than the first piece
    assert len(seen) >= 2, "the window never overflowed: the test needs more context"
    v_tok = gen.prompts.segment_rows(voice)[0]
    for _, tokens in seen:
        assert torch.equal(tokens[: v_tok.shape[0]], v_tok)
    assert bool((seen[0][1][:, 0] == 20).any())
    assert not bool((seen[-1][1][:, 0] == 20).any())  # the oldest turn went first, the voice stayed


# ----------------------------------------------------------------------------- stereo


@pytest.mark.parametrize("layout", ["numpy [T, 2]", "numpy [2, T]", "torch [2, T]", "torch [1, 2, T]"])
def test_stereo_reference_gives_the_codes_of_its_mono_downmix(tiny_generator, layout):
    gen = tiny_generator
    left = speech_like(0.96, seed=1)
    right = 0.5 * speech_like(0.96, seed=2, f0=240.0)
    mono = ((left + right) / 2).astype(np.float32)
    stereo = np.stack([left, right])  # [2, T]
    audio = {
        "numpy [T, 2]": stereo.T.copy(),
        "numpy [2, T]": stereo,
        "torch [2, T]": torch.from_numpy(stereo),
        "torch [1, 2, T]": torch.from_numpy(stereo)[None],
    }[layout]
    want = gen.encode_audio(mono)
    got = gen.encode_audio(audio)
    assert got.shape == want.shape == (12, 32)  # 0.96 s = 12 frames, not 24
    assert torch.equal(got, want)
    seg = Segment(0, "hello", audio, SR)
    assert np.asarray(seg.audio).ndim == 1  # downmixed where reference audio enters
    p_stereo, _, _ = gen.build_prompt("hi", 0, [seg], max_frames=10)
    p_mono, _, _ = gen.build_prompt("hi", 0, [Segment(0, "hello", mono, SR)], max_frames=10)
    assert torch.equal(p_stereo, p_mono)


def test_stereo_context_generates_like_mono(tiny_generator):
    stereo = np.stack([speech_like(0.5, 3), speech_like(0.5, 4)], axis=1)  # [T, 2]
    mono = stereo.mean(axis=1).astype(np.float32)
    kw = dict(text="hi there", max_audio_length_ms=4 * 80, temperature=0)
    a = tiny_generator.generate_codes(context=[Segment(0, "ref", stereo, SR, pinned=True)], **kw)
    b = tiny_generator.generate_codes(context=[Segment(0, "ref", mono, SR, pinned=True)], **kw)
    assert torch.equal(a, b)


def test_to_mono_handles_layouts_and_int_pcm():
    from echoforge.audio import AudioDecodeError, to_mono_float32

    x = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    st = np.stack([x, -x / 2])
    for a in (st, st.T, torch.from_numpy(st), torch.from_numpy(st.T.copy()), st[None], torch.from_numpy(st)[None]):
        out = to_mono_float32(a)
        assert out.shape == (100,) and np.allclose(out, x / 4)
    pcm = (np.stack([x, x]).T * 32767).astype(np.int16)  # int16 stereo is scaled, not left at ±16k
    assert np.allclose(to_mono_float32(pcm), x, atol=1e-4)
    with pytest.raises(AudioDecodeError):
        to_mono_float32(np.zeros((20, 30), np.float32))


# ----------------------------------------------------------------------------- over-long references


def test_over_long_reference_is_trimmed_at_a_pause_with_a_log_line(tiny_generator, caplog, monkeypatch):
    gen = tiny_generator
    monkeypatch.setattr(gen, "max_reference_s", 4.0, raising=False)
    audio = speech_like(12.0)
    transcript = " ".join(f"word{i}" for i in range(30))
    with caplog.at_level(logging.INFO, logger="echoforge.csm"):
        seg = gen.prepare_segment(Segment(0, transcript, audio, SR, pinned=True))
    lines = [r for r in caplog.records if "voice prompt is 12.0 s" in r.getMessage()]
    assert len(lines) == 1
    assert seg.pinned and seg.audio.dtype == torch.long
    assert 0.8 * 4.0 / 0.08 <= seg.audio.shape[0] <= 4.0 / 0.08  # at most the limit, cut late in it
    assert transcript.startswith(seg.text) and 0.2 * len(transcript) < len(seg.text) < 0.5 * len(transcript)
    # through build_prompt as well: the trimmed voice prompt, whole text, no error
    tokens, _, _ = gen.build_prompt("hi", 0, [Segment(0, transcript, audio, SR, pinned=True)], max_frames=10)
    assert tokens.shape[0] < 60 + 80
    # unpinned turns (generated or user speech) are never trimmed
    caplog.clear()
    turn = gen.prepare_segment(Segment(0, transcript, audio, SR))
    assert turn.audio.shape[0] == 150 and turn.text == transcript and not caplog.records


def test_cut_at_pause_lands_in_the_pause():
    from echoforge.audio import cut_at_pause

    a = speech_like(10.0)
    a[int(8.5 * SR) : int(8.9 * SR)] = 0.0  # a pause 0.6–1.0 s before the 9.5 s limit
    out = cut_at_pause(a, SR, 9.5)
    assert 8.5 * SR < out.size < 8.9 * SR
    assert cut_at_pause(a, SR, 20.0).size == a.size


def test_engine_takes_max_reference_s_from_settings(tiny_csm_dir):
    from echoforge.config import load_settings
    from echoforge.engines import create_engine

    eng = create_engine(load_settings(engine="csm", csm={"model": str(tiny_csm_dir), "watermark": False,
                                                          "max_reference_s": 6}))  # fmt: skip
    assert eng.generator.max_reference_s == 6
    assert load_settings().csm.max_reference_s == 15


# ----------------------------------------------------------------------------- entry points


def _wav(audio: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def csm_service(tiny_csm_dir, tmp_path):
    from echoforge.config import load_settings
    from echoforge.engines import create_engine
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import VoiceStore

    settings = load_settings(
        engine="csm", data_dir=str(tmp_path), csm={"model": str(tiny_csm_dir), "watermark": False, "max_reference_s": 5}
    )
    service = SynthesisService(create_engine(settings), VoiceStore(tmp_path), settings)
    yield service
    service.close()


def test_saved_voice_through_the_synthesis_service_is_a_pinned_trimmed_prompt(csm_service, caplog):
    stereo = np.stack([speech_like(20.0, 5), 0.5 * speech_like(20.0, 6)], axis=1)  # a 20 s stereo upload
    transcript = " ".join(f"w{i}" for i in range(60))
    voice = csm_service.voices.create(name="Stereo Sam", audio=_wav(stereo), transcript=transcript)
    with caplog.at_level(logging.WARNING, logger="echoforge.csm"):
        req = csm_service.build_request(
            text="hello again", voice=voice.id, context=[{"speaker": 1, "text": "an earlier turn"}]
        )
    prompt = req.context[0]
    assert prompt.pinned and not req.context[1].pinned
    assert prompt.audio.dtype == torch.long and prompt.audio.shape[0] <= 5 / 0.08  # trimmed codes
    assert prompt.text != transcript and transcript.startswith(prompt.text)
    assert "voice prompt is 20.0 s" in caplog.text
    # the disk cache gives the same pinned prompt back
    again = csm_service.build_request(text="and again", voice=voice.id)
    assert again.context[0].pinned and torch.equal(again.context[0].audio, prompt.audio)


def test_cli_and_conversation_prompts_are_pinned_and_mono(tmp_path):
    from echoforge.cli.csm import load_script

    stereo = np.stack([speech_like(1.0, 7), speech_like(1.0, 8)], axis=1)
    (tmp_path / "alice.wav").write_bytes(_wav(stereo))
    (tmp_path / "s.yaml").write_text(
        "speakers:\n  0: {prompt: alice.wav, transcript: 'hi there'}\nturns:\n  - {speaker: 0, text: hello}\n"
    )
    _, prompts, _ = load_script(tmp_path / "s.yaml", SR)
    assert prompts[0].pinned and prompts[0].audio.shape == (SR,)


def test_agent_tts_context_leads_with_the_saved_voice_prompt():
    import asyncio

    from echoforge.agent.config import AgentSettings
    from echoforge.agent.frames import TTSTextFrame
    from echoforge.agent.pipeline import Conversation, TTSProcessor, Turn, voice_prompts

    class Store:
        def get(self, voice):
            if voice != "v_1":
                raise KeyError(voice)
            return voice

        def prompt(self, voice, engine, speaker=None):
            return Segment(speaker, "reference", codes(10, 7))  # not pinned: the agent pins it

    class Engine:
        sample_rate = SR
        requests: list = []

        def stream(self, request):
            self.requests.append(request)
            yield np.zeros(10, np.float32)

    resolve = voice_prompts(Store(), Engine(), speaker=2)
    assert resolve("en-gb") is None and resolve(None) is None
    conv = Conversation(agent_speaker=2)
    conv.add(Turn("user", "hi", np.zeros(SR // 10, np.float32)))
    engine = Engine()
    proc = TTSProcessor(engine, conv, AgentSettings(speaker=2, voice="v_1"), voice_prompt=resolve)

    async def no_push(frame, direction=None):
        return None

    proc.push_frame = no_push
    asyncio.run(proc.process_frame(TTSTextFrame(text="hello", turn_id=1, index=0), None))
    ctx = engine.requests[-1].context
    assert ctx[0].pinned and ctx[0].speaker == 2 and ctx[0].text == "reference"
    assert [s.pinned for s in ctx[1:]] == [False] and ctx[1].text == "hi"
