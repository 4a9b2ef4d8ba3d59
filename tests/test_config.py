"""Configuration precedence and validation."""

from __future__ import annotations

import pytest

from echoforge.config import ConfigError, load_settings


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.engine == "auto"
    assert s.server.host == "127.0.0.1" and s.server.port == 8000
    assert s.csm.model == "sesame/csm-1b"


def test_precedence_yaml_dotenv_env_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "echoforge.yaml").write_text("engine: piper\nserver:\n  port: 9001\n  host: 0.0.0.0\ncsm:\n  model: /from/yaml\n")
    s = load_settings()
    assert (s.engine, s.server.port, s.csm.model) == ("piper", 9001, "/from/yaml")

    (tmp_path / ".env").write_text("ECHOFORGE_SERVER__PORT=9002\nECHOFORGE_ENGINE=espeak\n")
    s = load_settings()
    assert (s.engine, s.server.port, s.server.host) == ("espeak", 9002, "0.0.0.0")  # .env beats YAML, YAML fills the rest

    monkeypatch.setenv("ECHOFORGE_SERVER__PORT", "9003")
    s = load_settings()
    assert s.server.port == 9003 and s.engine == "espeak"  # env beats .env

    assert load_settings(engine="csm").engine == "csm"  # explicit beats everything


def test_config_path_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "custom.yaml"
    cfg.write_text("data_dir: /tmp/ef-data\ngeneration:\n  temperature: 0.5\n")
    monkeypatch.setenv("ECHOFORGE_CONFIG", str(cfg))
    s = load_settings()
    assert str(s.data_dir) == "/tmp/ef-data" and s.generation.temperature == 0.5


def test_missing_config_path_is_clear(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECHOFORGE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_settings()


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("engine: bogus\n", "engine"),
        ("server:\n  port: 99999\n", "server.port"),
        ("generation:\n  temperature: -1\n", "generation.temperature"),
        ("device: tpu\n", "device"),
        ("unknown_key: 1\n", "unknown_key"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, monkeypatch, yaml_text, field):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "echoforge.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert field in str(exc.value)


def test_bad_env_value_names_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECHOFORGE_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="server.port"):
        load_settings()


def test_secrets_are_redacted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(server={"api_keys": ["sk-very-secret"]}, agent={"llm_api_key": "abc"})
    red = s.redacted()
    assert "sk-very-secret" not in str(red) and "abc" not in str(red)
    assert s.server.api_keys[0].get_secret_value() == "sk-very-secret"
