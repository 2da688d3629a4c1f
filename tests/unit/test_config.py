import pytest

from lb_core import config

BASE = {"secret": "s", "servers": [{"name": "bbb1", "url": "https://bbb1.example.org", "secret": "x"}]}


def test_minimal_config_and_defaults():
    c = config.parse(BASE)
    assert c.servers[0].url == "https://bbb1.example.org/bigbluebutton/"
    assert c.servers[0].checksum == "sha256" and c.listen_port == 8090
    assert c.default_integration.secrets == ("s",)


@pytest.mark.parametrize(("change", "message"), [
    ({"listen": {"port": "x"}}, "listen.port: must be a number"),
    ({"servers": [{"name": "a", "url": "bbb1", "secret": "x"}]}, "servers[0].url: must be an http(s) URL"),
    ({"servers": [{"name": "a b", "url": "http://a", "secret": "x"}]}, "servers[0].name"),
    ({"servers": [{"name": "a", "url": "http://a", "secret": "x", "checksum": "md5"}]}, "servers[0].checksum"),
    ({"servers": [{"name": "a", "url": "http://a", "secret": "x", "colour": 1}]}, "servers[0].colour: unknown key"),
    ({"servers": [{"name": "a", "url": "http://a", "secret": "x"}] * 2}, "duplicate server name"),
    ({"monitor": {"interval_s": -1}}, "monitor.interval_s: must be at least"),
    ({"integrations": [{"name": "i", "secret": "s"}]}, "share a secret"),
    ({"admin": {"port": 9000}}, "admin.token: is required"),
    ({"secret": ""}, "secret: must not be empty"),
    ({"geo": {"database": "missing.mmdb"}}, "geo.database: no such file"),
    ({"geo": {"trusted_proxies": ["10.0.0.0/33"]}}, "geo.trusted_proxies: '10.0.0.0/33' is not an IP network"),
    ({"extra": True}, "extra: unknown key"),
])
def test_errors_name_the_key(change, message):
    with pytest.raises(config.ConfigError) as error:
        config.parse({**BASE, **change}, "my.yaml")
    assert str(error.value).startswith("my.yaml: ") and message in str(error.value)


def test_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("LB_SECRET", "from-env")
    c = config.parse({**BASE, "secret": "${LB_SECRET}"})
    assert c.default_integration.secrets == ("from-env",)
    with pytest.raises(config.ConfigError, match="secret: environment variable NOPE is not set"):
        config.parse({**BASE, "secret": "${NOPE}"})


def test_load_reports_yaml_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("secret: [unclosed\n")
    with pytest.raises(config.ConfigError, match=r"bad.yaml: line \d+: invalid YAML"):
        config.load(path)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.yaml")


def test_shipped_config_is_valid():
    from pathlib import Path
    shipped = config.load(Path(__file__).resolve().parents[2] / "config.yaml")
    assert [s.simulate for s in shipped.servers] == [True, True, True]
