"""GET /api/presets serves the studio's tone presets from the one table in analysis/params.py."""

from __future__ import annotations

from fastapi.testclient import TestClient

from echoforge.analysis.params import DEFAULT_PARAMS, parse_tone
from echoforge.config import load_settings
from echoforge.server.app import create_app


def test_presets_follow_the_emotion_table_and_overrides(tmp_path):
    settings = load_settings(engine="espeak", data_dir=tmp_path)
    settings.analysis["emotion_params"] = {"calm": {"temperature": 0.4}}
    with TestClient(create_app(settings)) as client:
        presets = client.get("/api/presets").json()
    by_id = {p["id"]: p for p in presets}
    assert list(by_id) == list(DEFAULT_PARAMS)
    assert by_id["neutral"] == {"id": "neutral", "label": "Neutral", "prefix": "",
                                "temperature": settings.generation.temperature, "topk": settings.generation.topk}
    assert by_id["happy"] == {"id": "happy", "label": "Happy", "prefix": "(happy)", "temperature": 0.8, "topk": 30}
    assert by_id["calm"]["temperature"] == 0.4 and by_id["calm"]["topk"] == 20  # override merged
    for p in presets[1:]:  # each prefix is one the server parses off to the same emotion
        assert parse_tone(p["prefix"] + " Hi.")[1] == [p["id"]]
