"""Config schema, overrides, scaling presets (shapes, parameter counts, memory estimate)."""

from __future__ import annotations

import pytest

from echoforge.train.configs import describe, load_config, memory_estimate, validate_shapes
from echoforge.train.modeling import count_parameters


@pytest.mark.parametrize(("name", "nominal"), [("csm-350m", 350e6), ("csm-1.5b", 1.5e9), ("csm-7b", 7e9)])
def test_scaling_presets_validate(name, nominal):
    cfg = load_config(name)
    args = cfg.model.scratch_args()
    counts = validate_shapes(args, cfg.model.expected_backbone_params, cfg.model.params_tolerance)
    assert abs(counts["backbone"] - nominal) < 0.1 * nominal
    mem = memory_estimate(args, cfg, world_size=1)
    mem8 = memory_estimate(args, cfg, world_size=8)
    assert mem["total"] > 0
    if cfg.distributed == "fsdp":  # sharding divides weights/grads/optimizer by the world size
        assert mem8["optimizer"] == pytest.approx(mem["optimizer"] / 8)
    assert "GiB" in describe(cfg)


def test_param_count_matches_the_real_module():
    from echoforge.csm.model import CSM, CSMArgs, ModelArgs

    args = CSMArgs(backbone=ModelArgs(n_layer=2, n_head=4, n_local_heads=2, dim=64, intermediate_size=96),
                   decoder=ModelArgs(n_layer=1, n_head=2, n_local_heads=1, dim=32, intermediate_size=48),
                   text_vocab_size=100, audio_vocab_size=50, audio_num_codebooks=4)  # fmt: skip
    model = CSM(args)
    assert count_parameters(args)["total"] == sum(p.numel() for p in model.parameters())


def test_bad_shapes_and_overrides_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="expected 350M"):
        describe(load_config("csm-350m", ["model.backbone.n_layer=12"]))
    with pytest.raises(ValueError, match="multiple of n_local_heads"):
        load_config("csm-350m", ["model.backbone.n_local_heads=5"])
    with pytest.raises(ValueError, match="divisible"):
        load_config("csm-350m", ["model.backbone.dim=1000"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("csm-350m", ["optim.lr"])
    cfg = load_config("finetune-lora", ["optim.lr=1e-3", "lora.r=4", "distributed=fsdp"])
    assert (cfg.optim.lr, cfg.lora.r, cfg.distributed, cfg.lora.enabled) == (1e-3, 4, "fsdp", True)
    with pytest.raises(ValueError):
        load_config("finetune-lora", ["optim.not_a_field=1"])
    (tmp_path / "bad.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="init_from"):
        load_config(tmp_path / "bad.yaml")
