"""Where the client sends requests and as whom: flag > environment > config file."""

from __future__ import annotations

import json

import pytest
from annex_client.cli import main
from annex_client.settings import config_path, read_config, region_from_endpoint, resolve

FILE_URL = "https://fromfile111.execute-api.eu-west-1.amazonaws.com/v1"
ENV_URL = "https://fromenv2222.execute-api.us-west-2.amazonaws.com/v1"
FLAG_URL = "https://fromflag333.execute-api.ap-southeast-2.amazonaws.com/v1"


def shown(capsys, *argv: str) -> dict:
    assert main(["configure", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_configure_writes_the_file_and_later_commands_use_it(capsys, tmp_path, monkeypatch):
    path = tmp_path / "annex" / "config"
    monkeypatch.setenv("ANNEX_CONFIG_FILE", str(path))
    assert main(["configure", "--endpoint", FILE_URL + "/", "--profile", "lab"]) == 0
    assert f"Saved to {path}" in capsys.readouterr().out
    assert read_config(path) == {"endpoint": FILE_URL, "profile": "lab"}
    settings = shown(capsys)
    assert settings["endpoint"] == {"value": FILE_URL, "from": str(path)}
    assert settings["profile"] == {"value": "lab", "from": str(path)}
    assert settings["region"] == {"value": "eu-west-1", "from": "the endpoint host"}


def test_configure_keeps_what_it_was_not_told_to_change(tmp_path, monkeypatch):
    path = tmp_path / "config"
    path.write_text("[annex]\nendpoint = " + FILE_URL + "\nprofile = lab\n\n[other]\nkeep = me\n")
    monkeypatch.setenv("ANNEX_CONFIG_FILE", str(path))
    assert main(["configure", "--region", "eu-west-1"]) == 0
    assert read_config(path) == {"endpoint": FILE_URL, "profile": "lab", "region": "eu-west-1"}
    assert "keep = me" in path.read_text()


def test_the_flag_beats_the_environment_which_beats_the_file(capsys, tmp_path, monkeypatch):
    path = tmp_path / "config"
    path.write_text(f"[annex]\nendpoint = {FILE_URL}\n")
    monkeypatch.setenv("ANNEX_CONFIG_FILE", str(path))
    assert shown(capsys)["endpoint"]["value"] == FILE_URL
    monkeypatch.setenv("ANNEX_ENDPOINT", ENV_URL)
    assert shown(capsys)["endpoint"] == {"value": ENV_URL, "from": "ANNEX_ENDPOINT"}
    s = resolve(endpoint=FLAG_URL, profile=None, region=None, environ={"ANNEX_ENDPOINT": ENV_URL})
    assert (s.endpoint, s.endpoint_source) == (FLAG_URL, "--endpoint")


def test_configure_warns_when_the_environment_overrides_the_file(capsys, monkeypatch):
    monkeypatch.setenv("ANNEX_ENDPOINT", ENV_URL)
    assert main(["configure", "--endpoint", FILE_URL]) == 0
    assert "ANNEX_ENDPOINT is set" in capsys.readouterr().out


def test_region_comes_from_the_flag_then_the_endpoint_host_then_the_environment():
    env = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "sa-east-1"}
    host = resolve(endpoint=ENV_URL, profile=None, region=None, environ=env)
    assert (host.region, host.region_source) == ("us-west-2", "the endpoint host")
    flag = resolve(endpoint=ENV_URL, profile=None, region="eu-central-1", environ=env)
    assert (flag.region, flag.region_source) == ("eu-central-1", "--region")
    custom = resolve(endpoint="https://annex.example.org/v1", profile=None, region=None, environ=env)
    assert (custom.region, custom.region_source) == ("us-east-1", "AWS_REGION")
    fallback = resolve(
        endpoint="https://annex.example.org/v1",
        profile=None,
        region=None,
        environ={"AWS_DEFAULT_REGION": "x"},
    )
    assert fallback.region == "x"


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://abc123.execute-api.us-east-1.amazonaws.com/v1", "us-east-1"),
        ("https://abc123.execute-api.us-gov-west-1.amazonaws.com/v1", "us-gov-west-1"),
        ("https://abc123-vpce-0a1b.execute-api.eu-west-3.vpce.amazonaws.com/v1", "eu-west-3"),
        ("https://annex.example.org/v1", None),
        ("http://127.0.0.1:8080/v1", None),
    ],
)
def test_the_region_is_read_from_execute_api_hosts(url, region):
    assert region_from_endpoint(url) == region


def test_profile_comes_from_the_flag_then_aws_profile_then_the_file(tmp_path):
    path = tmp_path / "config"
    path.write_text("[annex]\nprofile = lab\n")
    env = {"ANNEX_CONFIG_FILE": str(path)}
    assert resolve(endpoint=None, profile=None, region=None, environ=env).profile == "lab"
    via_env = resolve(endpoint=None, profile=None, region=None, environ={**env, "AWS_PROFILE": "other"})
    assert (via_env.profile, via_env.profile_source) == (None, "AWS_PROFILE")  # botocore reads it
    assert resolve(endpoint=None, profile="flag", region=None, environ=env).profile == "flag"


def test_the_default_config_file_follows_xdg():
    assert str(config_path({"XDG_CONFIG_HOME": "/x"})) == "/x/annex/config"
    assert str(config_path({"ANNEX_CONFIG_FILE": "/y/c", "XDG_CONFIG_HOME": "/x"})) == "/y/c"
    assert str(config_path({})).endswith(".config/annex/config")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://annex.example.org/v1", "plain http"),
        ("ftp://annex.example.org/v1", "not an endpoint URL"),
        ("annex.example.org/v1", "not an endpoint URL"),
        ("https://annex.example.org/v1?stage=1", "query"),
    ],
)
def test_configure_refuses_a_bad_endpoint_with_exit_2(capsys, url, says, tmp_path):
    assert main(["configure", "--endpoint", url]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "no-annex-config").exists()


def test_plain_http_is_accepted_for_this_machine(capsys):
    assert (
        shown(capsys, "--endpoint", "http://127.0.0.1:8080/v1")["endpoint"]["value"]
        == "http://127.0.0.1:8080/v1"
    )


def test_a_bad_endpoint_in_the_environment_is_a_configuration_error(capsys, monkeypatch):
    monkeypatch.setenv("ANNEX_ENDPOINT", "http://annex.example.org/v1")
    assert main(["list"]) == 3
    assert "(from ANNEX_ENDPOINT)" in capsys.readouterr().err


def test_an_unreadable_config_file_is_a_configuration_error(capsys, tmp_path, monkeypatch):
    path = tmp_path / "config"
    path.write_text("endpoint = no section header\n")
    monkeypatch.setenv("ANNEX_CONFIG_FILE", str(path))
    assert main(["list"]) == 3
    err = capsys.readouterr().err
    assert f"cannot read {path}" in err
    assert "annex-client configure" in err
