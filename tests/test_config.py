"""Settings are declared once, and the docs cannot drift from the declarations."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pushskip import config
from pushskip.config import ConfigError, Settings

REPO = Path(__file__).resolve().parent.parent


def test_every_field_is_a_declared_setting() -> None:
    """Each Settings field carries its env var, parser and doc line (no undeclared knob)."""
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [name for name, _ in config.declared()] == names
    for name, spec in config.declared():
        assert spec.doc, name
        assert spec.env is None or re.fullmatch(r"[A-Z][A-Z0-9_]*", spec.env), name


def test_readme_configuration_table_is_the_generated_one() -> None:
    """README's configuration table is exactly what config.docs_table() renders."""
    readme = (REPO / "README.md").read_text()
    assert config.docs_table() in readme, "paste `python -m pushskip.config` into README.md"


def test_api_doc_names_every_variable() -> None:
    """docs/API.md's Configuration section names every operator-facing variable."""
    api = (REPO / "docs" / "API.md").read_text()
    section = api[api.index("## Configuration") :]
    for _, spec in config.declared():
        if spec.env:
            assert f"`{spec.env}`" in section, spec.env


def test_no_module_reads_the_environment_but_config() -> None:
    """Only config.py reads os.environ / os.getenv in the runtime package."""
    offenders = []
    for path in (REPO / "pushskip").rglob("*.py"):
        if path.name == "config.py":
            continue
        text = path.read_text()
        if re.search(r"os\.environ|os\.getenv|getenv\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_serving_settings_are_read_from_the_environment() -> None:
    """HOST, PORT, PUSHSKIP_LOG_LEVEL, PUSHSKIP_REDIS_SERVER and PUSHSKIP_REDIS_TIMEOUT_S land
    in their fields."""
    settings = Settings.from_env(
        {
            "HOST": "0.0.0.0",
            "PORT": "9001",
            "PUSHSKIP_LOG_LEVEL": "debug",
            "PUSHSKIP_REDIS_SERVER": "/opt/valkey-server",
            "PUSHSKIP_REDIS_TIMEOUT_S": "0.5",
        }
    )
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9001, "debug")
    assert settings.redis_server == "/opt/valkey-server"
    assert settings.redis_timeout_s == 0.5
    defaults = Settings.from_env({})
    assert (defaults.host, defaults.port, defaults.redis_server) == ("127.0.0.1", 8000, None)


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1"])
def test_port_must_be_a_port_number(value: str) -> None:
    """PORT outside 1-65535 is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="PORT"):
        Settings.from_env({"PORT": value})


def test_read_env_reads_one_setting() -> None:
    """read_env parses a single declared setting; unset, empty or env-less gives None."""
    assert config.read_env("port", {"PORT": "81"}) == 81
    assert config.read_env("port", {"PORT": ""}) is None
    assert config.read_env("port", {}) is None
    assert config.read_env("max_body_bytes", {"MAX_BODY_BYTES": "1"}) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:6379",
        "redis+sentinel://h1:26379,h2:26379",
        "redis+sentinel://h1:26379,h2/master",
        "redis+cluster://h1:7000,:7001",
        "mongodb://x",
    ],
)
def test_a_redis_url_of_no_known_deployment_is_refused(url: str) -> None:
    """REDIS_URL must name one server, a Sentinel master (hosts and a name) or a cluster."""
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": url})


@pytest.mark.parametrize(
    ("url", "form"),
    [
        ("redis://localhost:6379/0", "single"),
        ("unix:///tmp/redis.sock", "single"),
        ("redis+sentinel://:pw@h1:26379,h2:26380/pushskip?db=2", "sentinel"),
        ("redis+cluster://h1:7000,h2:7001", "cluster"),
    ],
)
def test_redis_urls_name_their_deployment(url: str, form: str) -> None:
    """Each form of REDIS_URL is taken, and redisform tells which it is."""
    from pushskip import redisform

    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert redisform.form_of(url) == form
    if form != "single":
        found = redisform.hosts(url)
        assert found.nodes[0][0] == "h1" and len(found.nodes) == 2
