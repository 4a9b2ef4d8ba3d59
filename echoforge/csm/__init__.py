"""Sesame CSM-1B inference: exact, streaming, batched (see ``generator.CSMGenerator``)."""

from echoforge.engines.base import Segment

__all__ = ["CSMGenerator", "Segment"]


def __getattr__(name: str):
    # Lazy so `import echoforge.csm` (e.g. for Segment) does not pull in torch/transformers.
    if name == "CSMGenerator":
        from echoforge.csm.generator import CSMGenerator

        return CSMGenerator
    raise AttributeError(name)
