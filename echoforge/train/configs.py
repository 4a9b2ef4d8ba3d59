"""The training config schema (pydantic), YAML loading with ``key=value`` overrides, and checks.

A config file is YAML with the sections below (every field has a default, see
``configs/*.yaml``). ``load_config(path, ["optim.lr=3e-4", "lora.enabled=true"])`` applies
command-line overrides in the nanoGPT ``configurator.py`` spirit, but typed.

Scaling presets (``configs/csm-350m.yaml`` -> ``csm-1.5b`` -> ``csm-7b``, the research plan's
350M -> 1.5B -> 7B backbones) give explicit shapes plus ``expected_backbone_params``;
:func:`validate_shapes` checks head/width divisibility and that the backbone's parameter
count is within ``params_tolerance`` of that number, and :func:`memory_estimate` prints
what one GPU needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from echoforge.csm.model import CSMArgs, ModelArgs, csm_configs, transformer_configs
from echoforge.train.modeling import count_parameters

CONFIG_DIR = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StackShape(_Strict):
    """One Llama stack (backbone or depth decoder)."""

    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_local_heads: int = Field(-1, description="KV heads (GQA); -1 = n_head")
    dim: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    head_dim: int = -1
    max_seq_len: int = 2048

    @model_validator(mode="after")
    def _divisible(self) -> StackShape:
        kv = self.n_head if self.n_local_heads == -1 else self.n_local_heads
        if kv < 1 or self.n_head % kv:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_local_heads {kv}")
        if self.head_dim == -1 and self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head} (or set head_dim)")
        if (self.dim // self.n_head if self.head_dim == -1 else self.head_dim) % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")
        return self

    def to_args(self) -> ModelArgs:
        return ModelArgs(**self.model_dump())


class ModelConfig(_Strict):
    """What to train: a checkpoint to fine-tune, or shapes to train from scratch."""

    init_from: str | None = Field(None, description="CSM checkpoint (dir or hub id) to fine-tune; None = from scratch.")
    preset: str | None = Field(None, description=f"Shape preset for from-scratch training: {sorted(csm_configs)}")
    backbone: StackShape | str | None = Field(None, description="Backbone shape, or a flavour name like 'llama-1B'.")
    decoder: StackShape | str | None = Field(None, description="Depth decoder shape or flavour ('llama-100M').")
    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051
    num_codebooks: int = 32
    tokenizer_from: str | None = Field(None, description="Tokenizer dir (default: init_from / codec_from).")
    codec_from: str | None = Field(
        None, description="Transformers CSM dir whose Mimi codec + tokenizer are bundled into checkpoints."
    )
    expected_backbone_params: float | None = Field(None, description="Nominal backbone size (e.g. 3.5e8); checked.")
    params_tolerance: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.init_from is None and self.preset is None and self.backbone is None:
            raise ValueError("model: set init_from (fine-tune) or preset / backbone (from scratch)")
        if self.init_from is None and self.codec_from is None and self.tokenizer_from is None:
            raise ValueError(
                "model: from-scratch training needs codec_from (or tokenizer_from) for the tokenizer/codec"
            )
        return self

    def scratch_args(self) -> CSMArgs:
        """CSMArgs for from-scratch training (preset, then explicit shapes override)."""
        if self.preset:
            args = CSMArgs.from_name(self.preset)
            bb, dec = args.backbone, args.decoder
        else:
            bb, dec = ModelArgs(**transformer_configs["llama-1B"]), ModelArgs(**transformer_configs["llama-100M"])

        def shape(v: StackShape | str | None, default: ModelArgs) -> ModelArgs:
            if v is None:
                return default
            if isinstance(v, str):
                if v not in transformer_configs:
                    raise ValueError(f"unknown flavour {v!r}; known: {sorted(transformer_configs)}")
                return ModelArgs(**transformer_configs[v])
            return v.to_args()

        return CSMArgs(backbone=shape(self.backbone, bb), decoder=shape(self.decoder, dec), text_vocab_size=self.text_vocab_size,
                       audio_vocab_size=self.audio_vocab_size, audio_num_codebooks=self.num_codebooks)  # fmt: skip


class DataConfig(_Strict):
    path: str = Field("data/prepared", description="Output directory of `echoforge data prepare`.")
    max_seq_len: int = Field(
        2048, ge=16, description="Rows per sequence (text tokens + frames); oldest context dropped to fit."
    )
    loss_on_context: bool = Field(True, description="Score context turns' frames too (all audio is real speech).")


class LossConfig(_Strict):
    decoder_fraction: float = Field(
        1 / 16, gt=0, le=1, description="Share of frames the depth decoder trains on (Sesame: 1/16)."
    )
    decoder_weight: float = Field(0.5, ge=0)


class LoraConfig(_Strict):
    """LoRA adapters on the named linear layers (weight-space, see ``modeling.LoRADelta``)."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["wqkv", "wo", "w1", "w3", "w13", "w2"],
        description="Linear layer names (attention qkv/out, MLP gate/up/down; w13 = a fused gate+up if present).",
    )


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr * min_lr_ratio.")
    warmup_steps: int = Field(100, ge=0)
    max_steps: int = Field(1000, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping.")
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch per rank.")
    grad_accum: int = Field(1, ge=1)


class TrainConfig(_Strict):
    """Everything ``echoforge train`` needs."""

    out_dir: str = "runs/csm"
    seed: int = 1337
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere."
    )
    grad_ckpt: bool = False
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="Under torchrun: DDP or FSDP2 (fully_shard)."
    )
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval_every: int = Field(200, ge=0, description="Steps between validations (0 = only at the end).")
    eval_batches: int = Field(20, ge=1)
    save_every: int = Field(500, ge=0, description="Steps between checkpoints (0 = only at the end).")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    resume: bool = Field(True, description="Continue from out_dir/last if it exists.")
    tensorboard: bool = False


# ----------------------------------------------------------------------------- loading


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (a path, or a name in ``echoforge/train/configs``) and apply ``a.b=value`` overrides."""
    p = Path(path)
    if not p.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.is_file():
        raise ValueError(
            f"config {path}: file not found (bundled: {sorted(f.stem for f in CONFIG_DIR.glob('*.yaml'))})"
        )
    raw = yaml.safe_load(p.read_text()) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-4")
        _set(raw, key.strip(), yaml.safe_load(value))
    return TrainConfig.model_validate(raw)


# ----------------------------------------------------------------------------- checks


def validate_shapes(args: CSMArgs, expected_backbone: float | None = None, tolerance: float = 0.15) -> dict[str, int]:
    """Check a model's shapes; returns its parameter counts. Raises ValueError on a bad shape."""
    for name, a in (("backbone", args.backbone), ("decoder", args.decoder)):
        if a.dim % a.n_head and a.head_dim == a.dim // a.n_head:  # head_dim derived from an indivisible dim
            raise ValueError(f"{name}: dim {a.dim} is not divisible by n_head {a.n_head}")
        if a.n_head % a.n_local_heads:
            raise ValueError(f"{name}: n_head {a.n_head} is not a multiple of n_local_heads {a.n_local_heads}")
        if a.head_dim % 2:
            raise ValueError(f"{name}: head_dim {a.head_dim} must be even (RoPE rotates pairs)")
    if args.audio_num_codebooks < 2:
        raise ValueError("num_codebooks must be >= 2 (codebook 0 + the depth decoder's)")
    counts = count_parameters(args)
    if expected_backbone:
        got = counts["backbone"]
        if abs(got - expected_backbone) > tolerance * expected_backbone:
            raise ValueError(
                f"backbone has {got / 1e6:.1f}M parameters, expected {expected_backbone / 1e6:.0f}M ±{tolerance:.0%}"
            )
    return counts


def memory_estimate(
    args: CSMArgs, cfg: TrainConfig, world_size: int = 1, trainable: int | None = None
) -> dict[str, float]:
    """Rough per-GPU memory in GiB for training ``args`` under ``cfg``.

    Weights fp32 (4 B/param, bf16 autocast casts on the fly), grads 4 B and AdamW 8 B per
    trainable param; FSDP divides all three by the world size. Activations: ~34·dim bytes
    per token per layer in bf16 (Korthikanti et al.; flash/mem-efficient attention has no
    T² term), 2·dim with gradient checkpointing plus one live layer; the decoder sees
    ``decoder_fraction`` of frames x 32 positions.
    """
    p = count_parameters(args)["total"]
    t = trainable if trainable is not None else p
    shard = world_size if cfg.distributed == "fsdp" else 1
    gib = 1024**3
    weights = 4 * p / shard
    grads = 4 * t / shard
    optim = 8 * t / shard
    tokens = cfg.optim.batch_size * cfg.data.max_seq_len
    bb, dec = args.backbone, args.decoder
    per_layer = 34 * bb.dim * tokens
    act_bb = (2 * bb.dim * tokens * bb.n_layer + per_layer) if cfg.grad_ckpt else per_layer * bb.n_layer
    dec_tokens = tokens * cfg.loss.decoder_fraction * args.audio_num_codebooks
    act_dec = 34 * dec.dim * dec_tokens * (1 if cfg.grad_ckpt else dec.n_layer)
    logits = 4 * tokens * args.audio_vocab_size + 4 * dec_tokens * args.audio_vocab_size
    out = {"weights": weights / gib, "grads": grads / gib, "optimizer": optim / gib,
           "activations": (act_bb + act_dec + logits) / gib}  # fmt: skip
    out["total"] = sum(out.values())
    return out


def describe(cfg: TrainConfig, world_size: int = 1) -> str:
    """A few lines: shapes, parameter counts, memory estimate (printed by the CLI)."""
    if cfg.model.init_from:
        return f"fine-tuning {cfg.model.init_from} (shapes from its config.json)"
    args = cfg.model.scratch_args()
    counts = validate_shapes(args, cfg.model.expected_backbone_params, cfg.model.params_tolerance)
    mem = memory_estimate(args, cfg, world_size)
    bb, dec = args.backbone, args.decoder
    return "\n".join([
        f"backbone: {bb.n_layer} layers x {bb.dim} (heads {bb.n_head}/{bb.n_local_heads} kv, ffn {bb.intermediate_size}) "
        f"= {counts['backbone'] / 1e6:.1f}M params",
        f"decoder:  {dec.n_layer} layers x {dec.dim} = {counts['decoder'] / 1e6:.1f}M; embeddings+heads "
        f"{(counts['text_embeddings'] + counts['audio_embeddings'] + counts['heads']) / 1e6:.1f}M; total {counts['total'] / 1e9:.2f}B",
        f"memory/GPU ({cfg.distributed}, world {world_size}, micro-batch {cfg.optim.batch_size}x{cfg.data.max_seq_len}, "
        f"grad_ckpt {cfg.grad_ckpt}): " + ", ".join(f"{k} {v:.1f} GiB" for k, v in mem.items()),
    ])  # fmt: skip
