"""Built-in voices: ``voices.yaml`` plus short synthetic reference clips (package data)."""
