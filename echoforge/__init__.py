"""EchoForge: a local-first conversational voice platform built around Sesame's CSM-1B."""

__version__ = "0.1.0"
