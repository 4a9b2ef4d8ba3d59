"""Training for CSM: dataset preparation, the trainer (full / LoRA, DDP / FSDP2) and scaling configs.

Modules:
    data         -- ``echoforge data prepare``: manifests / long recordings -> memory-mapped shards.
    modeling     -- the training forward (no KV cache) and the loss over our inference ``CSM`` modules,
                    plus the export to a transformers-format checkpoint that ``CSMGenerator`` loads.
    trainer      -- the loop (``echoforge train CONFIG``).
    distributed  -- torchrun set-up, DDP / FSDP2 wrapping.
    configs      -- the pydantic config schema and the scaling presets in ``configs/*.yaml``.
"""
