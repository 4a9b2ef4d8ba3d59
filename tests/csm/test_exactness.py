"""Our CSM equals transformers' CsmForConditionalGeneration on the same (random) weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from echoforge.csm import CSMGenerator, Segment
from echoforge.csm.layouts import export_sesame_state_dict

TEXT, CTX_TEXT = "how are you today", "hello world this is a test"


def hf_prompt(gen: CSMGenerator, hf, n_audio_frames: int):
    """input_ids the way CSM's chat template renders [context turn with audio, target turn]."""
    tok, bos, eos = gen.ckpt.tokenizer, gen.ckpt.bos_id, gen.ckpt.eos_id
    cfg = hf.config
    ids = [bos, *tok.encode(f"[1]{CTX_TEXT}", add_special_tokens=False).ids, eos]
    ids += [cfg.audio_token_id] * n_audio_frames + [cfg.audio_eos_token_id]
    ids += [bos, *tok.encode(f"[0]{TEXT}", add_special_tokens=False).ids, eos]
    return torch.tensor([ids])


@pytest.fixture(scope="module")
def context(tiny_generator, hf_csm, prompt_audio):
    codes = tiny_generator.encode_audio(prompt_audio)
    ref = hf_csm.codec_model.encode(prompt_audio[None, None]).audio_codes[0].T  # [F, 32]
    assert torch.equal(codes, ref), "our Mimi encode differs from transformers'"
    assert codes.float().std() > 0, "tiny Mimi must not collapse to one code"
    return [Segment(speaker=1, text=CTX_TEXT, audio=prompt_audio)], codes.shape[0]


def test_backbone_and_decoder_logits_match(tiny_generator, hf_csm, prompt_audio, context):
    gen, m = tiny_generator, tiny_generator.model
    segs, n_frames = context
    tokens, mask, _ = gen.build_prompt(TEXT, 0, segs, max_frames=10)
    ids = hf_prompt(gen, hf_csm, n_frames)
    assert tokens.shape[0] == ids.shape[1]
    with torch.no_grad():
        ref = hf_csm(
            input_ids=ids, input_values=prompt_audio[None, None], input_values_cutoffs=torch.tensor([[prompt_audio.numel()]]),
            output_hidden_states=True,
        )  # fmt: skip
        t = tokens.shape[0]
        pos = torch.arange(t)
        m.setup_caches(4)
        hidden = m.backbone(m.embed_tokens(tokens[None], mask[None]), pos, None, t)
        logits = m.codebook0_head(hidden)
        assert (logits - ref.logits).abs().max() < 1e-4  # every position, context audio included

        # Depth decoder, teacher-forced on one frame: position i>0 predicts codebook i.
        h = hidden[:, -1]
        frame = torch.randint(0, 2048, (1, 32), generator=torch.Generator().manual_seed(1))
        ref_dd = hf_csm.depth_decoder(
            input_ids=torch.cat([torch.zeros(1, 1, dtype=torch.long), frame[:, :-1]], 1),
            backbone_last_hidden_state=ref.hidden_states[-1][:, -1],
        ).logits  # [1, 31, vocab]
        x = torch.cat([m.projection(h)[:, None]] + [m.embed_code(i, frame[:, i]) for i in range(31)], 1)
        p32 = torch.arange(32)
        out = m.decoder(x, p32, m.decoder_causal[None, None], None)
        ours_dd = torch.stack([out[:, i] @ m.audio_head[i - 1] for i in range(1, 32)], 1)
        assert (ours_dd - ref_dd).abs().max() < 1e-4


def hf_generate_codes(gen: CSMGenerator, hf, prompt_audio: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' greedy codes ``[n, 32]`` for [context turn with ``prompt_audio``, target turn]."""
    ids = hf_prompt(gen, hf, gen.encode_audio(prompt_audio).shape[0])
    with torch.no_grad():
        # attention_mask as CsmProcessor returns it; generate would otherwise infer one from
        # pad_token_id, which CSM configs set equal to the audio token id.
        ref = hf.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), input_values=prompt_audio[None, None],
            input_values_cutoffs=torch.tensor([[prompt_audio.numel()]]), max_new_tokens=n, do_sample=False,
            depth_decoder_do_sample=False,
        )[0]  # fmt: skip
    return ref[:n]


def our_greedy_codes(gen: CSMGenerator, prompt_audio: torch.Tensor, n: int) -> torch.Tensor:
    """Our greedy codes for the same two turns as :func:`hf_generate_codes`."""
    segs = [Segment(speaker=1, text=CTX_TEXT, audio=prompt_audio)]
    return gen.generate_codes(TEXT, speaker=0, context=segs, max_audio_length_ms=n * 80, temperature=0)


def test_greedy_codes_match_transformers_generate(tiny_generator, hf_csm, prompt_audio, context):
    n = 6
    ours = our_greedy_codes(tiny_generator, prompt_audio, n)
    assert ours.shape == (n, 32)
    assert torch.equal(ours, hf_generate_codes(tiny_generator, hf_csm, prompt_audio, n))


def test_original_sesame_layout_gives_same_codes(tiny_generator, tiny_csm_dir, hf_csm, tmp_path):
    from safetensors.torch import save_file

    m = tiny_generator.model
    d = tmp_path / "sesame"
    d.mkdir()
    save_file(export_sesame_state_dict(m), str(d / "model.safetensors"))
    flavor = lambda a: dict(n_layer=a.n_layer, n_head=a.n_head, n_local_heads=a.n_local_heads, dim=a.dim,  # noqa: E731
                            intermediate_size=a.intermediate_size, rope_scaling=a.rope_scaling)  # fmt: skip
    (d / "config.json").write_text(json.dumps({
        "backbone_flavor": flavor(m.args.backbone), "decoder_flavor": flavor(m.args.decoder),
        "text_vocab_size": m.args.text_vocab_size, "audio_vocab_size": 2051, "audio_num_codebooks": 32,
    }))  # fmt: skip
    shutil.copy(tiny_csm_dir / "tokenizer.json", d / "tokenizer.json")
    hf_csm.codec_model.save_pretrained(tmp_path / "mimi")
    sesame = CSMGenerator.from_pretrained(d, device="cpu", codec=tmp_path / "mimi")
    assert sesame.ckpt.layout == "sesame"
    kw = dict(text=TEXT, speaker=0, max_audio_length_ms=5 * 80, temperature=0)
    assert torch.equal(sesame.generate_codes(**kw), tiny_generator.generate_codes(**kw))


def _interleaved_rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    # torchtune's convention: rotate adjacent pairs (x0, x1), (x2, x3), ...
    ang = pos[:, None] * inv_freq[None]  # [T, hd/2]
    x = x.unflatten(-1, (-1, 2))
    c, s = ang.cos(), ang.sin()
    return torch.stack([x[..., 0] * c - x[..., 1] * s, x[..., 1] * c + x[..., 0] * s], -1).flatten(-2)


def test_sesame_export_uses_interleaved_rope(tiny_generator):
    """Attention scores from exported (torchtune) q/k with interleaved RoPE equal ours with half-split RoPE."""
    from echoforge.csm.model import apply_rope, rope_inv_freq

    m = tiny_generator.model
    a = m.args.backbone
    sd = export_sesame_state_dict(m)
    x = torch.randn(5, a.dim, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(5)
    sizes = [a.n_head * a.head_dim, a.n_local_heads * a.head_dim, a.n_local_heads * a.head_dim]
    wq, wk, _ = m.backbone.layers[0].attention.wqkv.weight.split(sizes)
    with torch.no_grad():
        cos, sin = m.backbone.rope_cos[pos], m.backbone.rope_sin[pos]
        heads = lambda w, n: (x @ w.T).view(5, n, a.head_dim).transpose(0, 1)  # noqa: E731  [H, T, hd]
        q = apply_rope(heads(wq, a.n_head)[None], cos[None, None], sin[None, None])[0]
        k = apply_rope(heads(wk, a.n_local_heads)[None], cos[None, None], sin[None, None])[0]
        inv = rope_inv_freq(a)
        qs = _interleaved_rope(heads(sd["backbone.layers.0.attn.q_proj.weight"], a.n_head), pos, inv)
        ks = _interleaved_rope(heads(sd["backbone.layers.0.attn.k_proj.weight"], a.n_local_heads), pos, inv)
    assert not torch.allclose(sd["backbone.layers.0.attn.q_proj.weight"], wq)  # really permuted
    assert torch.allclose(q[0] @ k[0].T, qs[0] @ ks[0].T, atol=1e-4)
