"""The configuration models: every problem names the file and the key, unknown keys are refused
everywhere, numbers are bounded, and the admin API's bodies go through the same models."""

import re

import pytest

from addons import cli
from lb_core import config, config_sections, config_types
from lb_core.controls_servers import stored_server

SERVER = {"name": "bbb1", "url": "https://bbb1.example.org", "secret": "x"}
BASE = {"secret": "s", "servers": [SERVER]}
WHERE = re.compile(r"^my\.yaml: [a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: \S")


def problems(data: object) -> list[str]:
    with pytest.raises(config.ConfigError) as error:
        config.parse(data, "my.yaml")
    return str(error.value).splitlines()


SECTIONS = [name for name, field in config.Config.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, config_types.Model)]


def test_every_section_is_a_model_and_refuses_unknown_keys():
    assert set(SECTIONS) >= {"listen", "store", "backend", "monitor", "balancer", "geo", "admin", "callbacks",
                             "events", "cache"}
    for section in SECTIONS:
        assert problems({**BASE, section: {"colour": 1}}) == [f"my.yaml: {section}.colour: unknown key"]
    assert problems({**BASE, "servers": [{**SERVER, "colour": 1}]}) == ["my.yaml: servers[0].colour: unknown key"]
    assert problems({**BASE, "integrations": [{"name": "i", "secret": "t", "colour": 1}]}) == [
        "my.yaml: integrations[0].colour: unknown key"]


@pytest.mark.parametrize(("change", "message"), [
    ({"listen": {"port": 65536}}, "listen.port: must be at most 65535"),
    ({"listen": {"port": -1}}, "listen.port: must be at least 0"),
    ({"listen": {"port": 80.5}}, "listen.port: must be a whole number"),
    ({"listen": {"port": True}}, "listen.port: must be a whole number"),
    ({"backend": {"timeout_s": 0}}, "backend.timeout_s: must be at least 0.1"),
    ({"backend": {"max_body_bytes": 100}}, "backend.max_body_bytes: must be at least 1024"),
    ({"monitor": {"down_after": 0}}, "monitor.down_after: must be at least 1"),
    ({"monitor": {"concurrency": "many"}}, "monitor.concurrency: must be a number"),
    ({"balancer": {"voice_cost": -0.5}}, "balancer.voice_cost: must be at least 0"),
    ({"balancer": {"voice_cost": "cheap"}}, "balancer.voice_cost: must be a number"),
    ({"cache": {"get_meetings_s": -1}}, "cache.get_meetings_s: must be at least 0"),
    ({"geo": {"nearby_km": -1}}, "geo.nearby_km: must be at least 0"),
    ({"geo": {"prefer_nearby": True}}, "geo.prefer_nearby: needs geo.database"),
    ({"admin": {"port": 65536, "token": "t" * 16}}, "admin.port: must be at most 65535"),
    ({"admin": {"token": "short"}}, "admin.token: must be at least 16 characters"),
    ({"callbacks": {"retry_delays_s": []}}, "callbacks.retry_delays_s: must not be empty"),
    ({"callbacks": {"retry_delays_s": [1, -2]}}, "callbacks.retry_delays_s[1]: must be at least 0"),
    ({"events": {"enabled": "yes"}}, "events.enabled: must be true or false"),
    ({"events": {"retention_days": -1}}, "events.retention_days: must be at least 0"),
    ({"callbacks": {"max_per_host": 0}}, "callbacks.max_per_host: must be at least 1"),
    ({"callbacks": {"timeout_s": 0.01}}, "callbacks.timeout_s: must be at least 0.1"),
    ({"callbacks": {"allowed_networks": ["10.0.0.0/33"]}},
     "callbacks.allowed_networks: '10.0.0.0/33' is not an IP network (CIDR)"),
    ({"web_port": 8081}, "web_port: unknown key"),
    ({"limits": {"max_params": 3}}, "limits.max_params: must be at least 16"),
    ({"limits": {"idle_timeout_s": 0}}, "limits.idle_timeout_s: must be at least 0.1"),
    ({"limits": {"max_upload_bytes": 2048}}, "limits.max_body_bytes: must not exceed max_upload_bytes"),
    ({"servers": [{**SERVER, "weight": 0}]}, "servers[0].weight: must be at least 0.01"),
    ({"servers": [{**SERVER, "max_meetings": 0}]}, "servers[0].max_meetings: must be at least 1"),
    ({"servers": [{**SERVER, "state": "on"}]}, "servers[0].state: must be enabled, disabled or auto"),
    ({"servers": [{**SERVER, "url": "http://h:port"}]}, "servers[0].url: has an invalid port"),
    ({"servers": [SERVER, {**SERVER, "name": "bbb2", "url": "bbb2"}]},
     "servers[1].url: must be an http(s) URL, got 'bbb2'"),
    ({"servers": [SERVER, SERVER]}, "servers[1].name: duplicate server name 'bbb1'"),
    ({"servers": [{"name": "a", "url": "http://a"}]}, "servers[0].secret: is required"),
    ({"servers": SERVER}, "servers: must be a list"),
    ({"servers": ["bbb1"]}, "servers[0]: must be a mapping"),
    ({"integrations": [{"name": "i", "secret": "t", "max_meetings": -1}]},
     "integrations[0].max_meetings: must be at least 0"),
    ({"integrations": [{"name": "i", "secret": "t"}, {"name": "i", "secret": "u"}]},
     "integrations[1].name: duplicate integration name 'i'"),
    ({"integrations": [{"name": "default", "secret": "t"}]},
     "integrations[0].name: duplicate integration name 'default'"),
    ({"checksum_algorithms": ["md5"]}, "checksum_algorithms: unknown algorithm 'md5'"),
    ({"log_level": "loud"}, "log_level: must be debug, info, warn or error"),
    ({"public_url": "lb.example.org"}, "public_url: must be an http(s) URL, got 'lb.example.org'"),
    ({"listen": 8090}, "listen: must be a mapping"),
    ({"instance_id": ["a"]}, "instance_id: must be a string"),
])
def test_every_error_names_the_file_and_the_key(change, message):
    found = problems({**BASE, **change})
    assert any(line == f"my.yaml: {message}" or line.startswith(f"my.yaml: {message}") for line in found), found
    assert all(WHERE.match(line) for line in found), found


def test_all_problems_are_reported_at_once():
    found = problems({"listen": {"port": "x"}, "servers": [{"name": "a", "url": "ftp://a", "secret": "x"}]})
    assert found == ["my.yaml: listen.port: must be a number",
                     "my.yaml: secret: is required",
                     "my.yaml: servers[0].url: must be an http(s) URL, got 'ftp://a'"]


def test_null_means_the_default_and_numbers_are_text_where_text_is_expected():
    c = config.parse({**BASE, "listen": None, "monitor": {"interval_s": None}, "secret": 1234})
    assert c.listen_port == 8090 and c.monitor.interval_s == 10.0 and c.default_integration.secrets == ("1234",)


def test_unset_environment_variable_names_the_key(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    assert problems({**BASE, "servers": [SERVER, {**SERVER, "name": "b", "secret": "${NOPE}"}]}) == [
        "my.yaml: servers[1].secret: environment variable NOPE is not set"]
    monkeypatch.setenv("ADMIN_TOKEN", "t" * 20)
    assert config.parse({**BASE, "admin": {"port": 0, "token": "${ADMIN_TOKEN}"}}).admin.token == "t" * 20


def test_secrets_stay_out_of_repr():
    c = config.parse({**BASE, "previous_secret": "old-one", "admin": {"port": 0, "token": "admin-token-123456"},
                      "integrations": [{"name": "i", "secret": "int-secret"}]})
    text = repr(c)
    assert not any(secret in text for secret in ("'s'", "old-one", "admin-token-123456", "int-secret", "'x'"))


def test_flat_names_and_relative_paths(tmp_path):
    (tmp_path / "geo.mmdb").write_bytes(b"")
    c = config.parse({**BASE, "store": {"path": "state/lb.json"}, "geo": {"database": "geo.mmdb"},
                      "backend": {"max_body_bytes": 1048576}, "events": {"enabled": False}}, "my.yaml", tmp_path)
    assert c.store_path == str(tmp_path / "state" / "lb.json") and c.geo.database == str(tmp_path / "geo.mmdb")
    assert (c.max_body_bytes, c.record_events, c.public_url) == (1048576, False, "http://127.0.0.1:8090")
    assert c.path == "my.yaml" and c.servers[0].disable_state == 3 and c.servers[0].api_url.endswith("/api/")
    with pytest.raises(Exception, match="frozen"):
        c.servers[0].weight = 2  # type: ignore[misc]


def test_hot_path_reads_are_plain_attribute_reads():
    """Read per request (body limit, secrets): computed once, then read from the instance like a field."""
    c = config.parse({**BASE, "integrations": [{"name": "i", "secret": "t"}]})
    integration = c.integrations[1]
    assert c.max_body_bytes == 64 * 1024 * 1024 and integration.secrets == ("t",)
    assert vars(c)["max_body_bytes"] == c.max_body_bytes and vars(integration)["secrets"] == ("t",)


def test_admin_bodies_use_the_same_models():
    server = config_types.parse_request(config_sections.ServerConfig, {"name": "x", "url": "http://h", "secret": "s"})
    assert server.url == "http://h/bigbluebutton/"
    for body, message in [
        ({"name": "x", "url": "ftp://h", "secret": "s"}, "url: must be an http(s) URL, got 'ftp://h'"),
        ({"name": "x", "url": "http://h", "secret": "s", "port": 1}, "port: unknown key"),
        ({"name": "x", "url": "http://h", "secret": "${HOME}"},
         "secret: ${...} environment references are only read from the config file"),
        ({"name": "x", "url": "http://h", "secret": "s", "weight": "heavy"}, "weight: must be a number"),
        ([1], "the request body must be a JSON object"),
    ]:
        with pytest.raises(config.ConfigError) as error:
            config_types.parse_request(config_sections.ServerConfig, body)
        assert str(error.value) == message


def test_admin_partial_change_keeps_current_values_and_null_clears():
    current = config_sections.IntegrationConfig(name="i", secret="new", previous_secret="old", max_meetings=3)
    changed = config_types.parse_request(config_sections.IntegrationConfig, {"name": "i", "previous_secret": None, "enabled": False},
                                   defaults=current.model_dump())
    assert (changed.secrets, changed.enabled, changed.max_meetings) == (("new",), False, 3)
    with pytest.raises(config.ConfigError, match="^secret: is required$"):
        config_types.parse_request(config_sections.IntegrationConfig, {"name": "j"})


def test_servers_saved_by_older_versions_still_load():
    legacy = {"name": "b", "url": "http://b/bigbluebutton/", "secret": "s", "checksum": "sha1", "weight": 2.0,
              "max_meetings": None, "max_participants": None, "disable_state": 1, "simulate": False}
    server = stored_server(legacy)
    assert (server.state, server.disable_state, server.checksum) == ("disabled", 1, "sha1")
    assert stored_server(server.model_dump()) == server


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_exits_2_naming_file_and_key(tmp_path, capsys, command):
    path = tmp_path / "config.yaml"
    path.write_text("secret: s\nservers:\n  - {name: a, url: http://a, secret: x}\n  - {name: b, url: bbb2, secret: y}\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--config", str(path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"bbb-lb: {path}: servers[1].url: must be an http(s) URL, got 'bbb2'\n"


def test_check_config_ok(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("secret: s\nservers:\n  - {name: a, url: http://a, secret: x}\n")
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert "OK (1 servers, 1 integrations)" in capsys.readouterr().out


def test_web_port_is_set_by_the_runner_not_the_file():
    c = config.parse(BASE)
    with_web = c.with_web_port(8081)
    assert (c.web_port, with_web.web_port, with_web.servers) == (None, 8081, c.servers)


def test_bound_listen_port_carries_into_a_default_public_url():
    c = config.parse({**BASE, "listen": {"port": 0}})
    assert (c.listen_port, c.max_body_bytes) == (0, 64 * 1024 * 1024)  # flat names cached before the copy
    bound = c.with_listen_port(4242)
    assert (bound.listen_port, bound.public_url, c.listen_port) == (4242, "http://127.0.0.1:4242", 0)
    fixed = config.parse({**BASE, "listen": {"port": 0}, "public_url": "https://lb.example.org/"})
    assert fixed.with_listen_port(4242).public_url == "https://lb.example.org"


def test_upload_limit_defaults_to_the_backend_body_limit():
    c = config.parse({**BASE, "backend": {"max_body_bytes": 1048576}})
    assert (c.limits.body_limit(upload=True), c.limits.body_limit(upload=False)) == (1048576, 64 * 1024)
    c = config.parse({**BASE, "backend": {"max_body_bytes": 1048576}, "limits": {"max_upload_bytes": 100_000}})
    assert c.limits.body_limit(upload=True) == 100_000
