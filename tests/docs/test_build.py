"""The docs site builds in strict mode, and its generated reference pages are complete."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mkdocs", reason="pip install mkdocs-material (the docs extra)")
pytest.importorskip("material", reason="pip install mkdocs-material (the docs extra)")


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs_under_test", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """``mkdocs build --strict`` into a scratch directory (the repo is left untouched)."""
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOFORGE_")}
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-5000:]}"
    return out, log


def test_strict_build_has_no_warnings(site):
    out, log = site
    assert "WARNING" not in log, log
    for page in ("index.html", "quickstart/index.html", "reference/configuration/index.html", "reference/api/index.html",
                 "observability/index.html", "architecture/index.html", "troubleshooting/index.html", "websocket/index.html"):
        assert (out / page).is_file(), page
    assert 'class="mermaid"' in (out / "architecture" / "index.html").read_text(encoding="utf-8")


def test_configuration_reference_lists_every_setting(site):
    gen = _gen_docs()
    md = gen.config_reference_md()
    html = (site[0] / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    keys = gen.all_setting_keys()
    assert "server.metrics_require_key" in keys and "csm.model" in keys
    from echoforge.config import Settings

    assert set(Settings.model_fields) <= set(keys)
    for key in keys:
        env = "ECHOFORGE_" + key.upper().replace(".", "__")
        assert f"`{key}`" in md, f"{key} missing from the configuration reference"
        assert env in md, f"{env} missing from the configuration reference"
        assert env in html, f"{env} missing from the built page"
    # Defaults and descriptions come from the model, not from hand-written text.
    assert '`"sesame/csm-1b"`' in md
    assert "Hub repo id or local directory of CSM weights." in md


def test_api_reference_lists_every_route(site):
    gen = _gen_docs()
    schema = gen.openapi_schema()
    md = gen.api_reference_md(schema)
    html = (site[0] / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert schema["paths"], "the server has no routes?"
    for path, item in schema["paths"].items():
        for method in item:
            assert f"### {method.upper()} `{path}`" in md, f"{method.upper()} {path} missing"
    for name in schema.get("components", {}).get("schemas", {}):
        assert f"### `{name}`" in md
    assert "/v1/audio/speech" in html


def test_gen_docs_writes_and_checks(tmp_path):
    gen = _gen_docs()
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "configuration.md").is_file() and (tmp_path / "api.md").is_file()
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "api.md").write_text("stale", encoding="utf-8")
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1


def test_gen_docs_fails_clearly_without_the_server(monkeypatch):
    gen = _gen_docs()
    monkeypatch.setitem(sys.modules, "echoforge.server.app", None)  # import now raises ImportError
    with pytest.raises(SystemExit, match="cannot import echoforge.server.app"):
        gen.openapi_schema()


def test_every_page_is_in_the_nav():
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from pages(value)
            else:
                yield value

    in_nav = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    generated = {"reference/configuration.md", "reference/api.md", "websocket.md"}
    assert on_disk - in_nav == set(), f"pages missing from the nav: {on_disk - in_nav}"
    assert in_nav - on_disk - generated == set(), f"nav entries without a page: {in_nav - on_disk - generated}"
