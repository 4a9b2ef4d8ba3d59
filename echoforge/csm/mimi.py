"""The Mimi codec (24 kHz <-> 12.5 Hz x 32 codebooks): :class:`MimiCodec` wraps transformers'
``MimiModel`` (always fp32) for whole-clip ``encode`` / ``decode`` and hands out streaming decoders
(:mod:`echoforge.csm.mimi_stream`; batched across streams by :mod:`echoforge.csm.mimi_batch`).
Loading: a Mimi checkpoint, the codec bundled in a transformers-format CSM, or ``kyutai/mimi``.

transformers is imported where a model is built (seconds to import; ``import echoforge.csm.mimi``
must stay cheap for the streaming and batching modules' users).
"""


from __future__ import annotations

import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from echoforge.csm.hub import resolve
from echoforge.csm.mimi_stream import DecoderGraph, StreamingDecoder
from echoforge.csm.rates import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE  # noqa: F401 - importable from here too

log = logging.getLogger("echoforge.csm")


# transformers saves Mimi (alone or as CSM's ``codec_model``) in the original flat layout and
# renames it while loading; a state dict read straight from safetensors needs the same renames.
_FLAT_TO_NESTED = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("upsample.", "decoder.upsample."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
)


def nest_mimi_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a flat-layout Mimi state dict (``decoder.layers.*``, ``upsample.*`` ...) to ``MimiModel``'s names.

    Keys already in ``MimiModel``'s layout (``decoder.decoder_seanet.*``) pass through unchanged.
    """
    out = {}
    for key, value in state.items():
        for old, new in _FLAT_TO_NESTED:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


class MimiCodec:
    """Mimi encode/decode at 24 kHz; codes are ``LongTensor[frames, num_codebooks]``.

    Args:
        model: a transformers ``MimiModel``; it is put in eval mode and kept fp32.
    """

    def __init__(self, model: nn.Module):
        self.model = model.float().eval()
        cfg = model.config
        self.config = cfg
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = float(cfg.frame_rate)
        self.frame_size = int(round(self.sample_rate / self.frame_rate))
        self.num_codebooks = int(cfg.num_quantizers)
        self.codebook_size = int(cfg.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, device: str | torch.device = "cpu") -> MimiCodec:
        """Load Mimi from a local directory or a hub repo id.

        Accepts a Mimi checkpoint (``config.json`` with ``model_type: mimi``, e.g. ``kyutai/mimi``)
        or a transformers CSM checkpoint whose ``config.json`` carries ``codec_config`` and whose
        safetensors hold the codec under ``codec_model.*``.

        Raises:
            FileNotFoundError: the directory has no ``config.json``.
            ValueError: the config is neither Mimi nor CSM-with-codec, or weights are missing.
        """
        path = Path(path_or_repo_id)
        if not path.is_dir():
            path = _download(str(path_or_repo_id))
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: not found; a Mimi or CSM checkpoint directory needs config.json")
        cfg = json.loads(cfg_file.read_text())
        kind = cfg.get("model_type")
        if kind == "mimi":
            from transformers import MimiModel

            model = MimiModel.from_pretrained(str(path))
            return cls(model.float().eval().to(device))
        if kind == "csm":
            if not cfg.get("codec_config"):
                raise ValueError(
                    f"{cfg_file}: CSM config has no codec_config; pass a Mimi checkpoint (e.g. kyutai/mimi)"
                )
            state = _read_safetensors(path, prefix="codec_model.")
            if not state:
                raise ValueError(f"{path}: no codec_model.* weights in the safetensors; pass a Mimi checkpoint instead")
            return cls.from_state_dict(cfg["codec_config"], state, device=device)
        raise ValueError(f"{cfg_file}: model_type {kind!r} is not 'mimi' or 'csm'")

    @classmethod
    def from_state_dict(
        cls, config: dict[str, Any] | Any, state: dict[str, Tensor], device: str | torch.device = "cpu"
    ) -> MimiCodec:
        """Build from a Mimi config (dict or ``MimiConfig``) and a state dict in either layout.

        Raises:
            ValueError: weights missing or unexpected for this config.
        """
        from transformers import MimiConfig, MimiModel

        if isinstance(config, dict):
            config = dict(config)
            config.pop("model_type", None)
            config.pop("transformers_version", None)
            config = MimiConfig(**config)
        model = MimiModel(config)
        missing, unexpected = model.load_state_dict(nest_mimi_state(state), strict=False)
        # Non-persistent buffers (RoPE inv_freq, conv strides) are not saved; everything else must match.
        missing = [k for k in missing if not k.endswith(("inv_freq", "_embed"))]
        if missing or unexpected:
            raise ValueError(f"Mimi weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return cls(model.float().eval().to(device))

    # ------------------------------------------------------------------ whole-clip API
    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """1-D float audio at 24 kHz ``[T]`` -> codes ``LongTensor[ceil(T / 1920), num_codebooks]``."""
        audio = torch.as_tensor(audio)
        if audio.ndim != 1:
            raise ValueError(f"encode expects 1-D audio [T], got shape {tuple(audio.shape)}")
        if audio.numel() == 0:
            return torch.zeros(0, self.num_codebooks, dtype=torch.long)
        x = audio.to(self.device, torch.float32)[None, None]  # [B=1, C=1, T]
        codes = self.model.encode(x, num_quantizers=self.num_codebooks).audio_codes  # [1, K, F]
        return codes[0].transpose(0, 1).long()  # [F, K]

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[frames, K]`` -> 1-D float audio ``[frames * 1920]`` at 24 kHz."""
        codes = self._check_codes(codes)
        if codes.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        audio = self.model.decode(codes.transpose(0, 1)[None]).audio_values  # [1, 1, T]
        return audio.reshape(-1)

    @functools.cached_property
    def decoder_graph(self) -> DecoderGraph:
        """The decoder as one function of explicit state (built once; what streaming decoders run)."""
        return DecoderGraph(self)

    def streaming_decoder(self) -> StreamingDecoder:
        """A fresh stateful decoder: feed codes chunk by chunk, get audio chunk by chunk."""
        return StreamingDecoder(self)

    def _check_codes(self, codes: Tensor) -> Tensor:
        codes = torch.as_tensor(codes)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(f"codes must be [frames, K<= {self.num_codebooks}], got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError("codes must be integer")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in 0..{self.codebook_size - 1} (got {int(codes.min())}..{int(codes.max())})"
            )
        return codes.to(self.device, torch.long)


def _download(repo_id: str) -> Path:
    """Fetch config + safetensors of a hub repo (or find them in the local HF cache)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"])
        )
    except Exception as exc:
        raise FileNotFoundError(
            f"Mimi codec {repo_id!r}: not a local directory and could not be fetched from the hub ({exc}); "
            "download it (e.g. `huggingface-cli download kyutai/mimi`) or pass a local path"
        ) from exc


def _read_safetensors(path: Path, prefix: str) -> dict[str, Tensor]:
    """All tensors under ``prefix`` (prefix stripped) from ``model.safetensors`` or its shards."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in path.glob("*.safetensors")]
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights found")
    out: dict[str, Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = f.get_tensor(key)
    return out


def frames_for_samples(num_samples: int) -> int:
    """Code frames Mimi produces for ``num_samples`` of 24 kHz audio."""
    return math.ceil(num_samples / FRAME_SIZE)


def load_codec(model_dir: str | Path, device: str = "cpu") -> Any:
    """Mimi from a Mimi checkpoint or bundled in a transformers-format CSM directory, else ``kyutai/mimi``."""
    d = resolve(model_dir)
    d = d if d.is_dir() else d.parent
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if cfg.get("model_type") == "mimi" or cfg.get("codec_config"):
        return MimiCodec.from_pretrained(d, device=device)
    return MimiCodec.from_pretrained("kyutai/mimi", device=device)
