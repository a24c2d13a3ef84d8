"""The terminal configuration file: the commented default, reading, and clear errors (exit 12)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.config import DEFAULT_TOML, load_config, parse_config, write_default
from sscard.terminal.errors import ConfigError


def test_default_file_is_commented_and_reads_back(tmp_path):
    path = write_default(tmp_path / "sub" / "terminal.toml", terminal_no=3)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n#") >= 8 and "number = 3" in text
    assert text.replace("number = 3", "number = 1") == DEFAULT_TOML.replace('device = ""', f'device = "{load_config(path).device}"')
    assert path.stat().st_mode & 0o777 == 0o600
    config = load_config(path)
    assert config.station.region == "330300" and config.station.fixmedins_code == "H33030200001"
    assert config.terminal_no == 3 and config.device.startswith("DEV-") and config.station.dev_no == config.device
    assert config.queue_path == path.parent.resolve() / "queue.sqlite"
    assert config.key_store_args() == {"psam": None, "key_file": None} and config.desk_requires_pin
    with pytest.raises(ConfigError, match="already exists"):
        write_default(path)
    write_default(path, force=True)


@pytest.mark.parametrize(("old", "new", "match"), [
    ('code = "H33030200001"', 'code = "h1"', "institution code"),
    ('region = "330300"', 'region = "3303"', "region"),
    ('region = "330300"', 'region = "３３０３００"', "region"),  # full-width digits: not ASCII, refused
    ("number = 1", "number = 100", "terminal number"),
    ("number = 1", 'number = "1"', "number must be a int"),
    ('store = "test"', 'store = "disk"', "store must be"),
    ("require_pin = true", 'require_pin = "yes"', "require_pin"),
    ('url = "http://127.0.0.1:8930"', "", "url is missing"),
    ("[institution]", "[institution", "not valid TOML"),
])
def test_invalid_configuration_is_a_config_error(old, new, match):
    assert old in DEFAULT_TOML
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(DEFAULT_TOML.replace(old, new), Path("/etc/sscard/terminal.toml"))
    assert exit_code(err.value) == 12


def test_key_store_forms(tmp_path):
    psam = parse_config(DEFAULT_TOML.replace('store = "test"', 'store = "psam:Virtual PCD 00 01"'))
    assert psam.key_store_args() == {"psam": "Virtual PCD 00 01", "key_file": None}
    keyfile = parse_config(DEFAULT_TOML.replace('store = "test"', 'store = "file:keys.json"'), tmp_path / "t.toml")
    assert keyfile.key_store_args()["key_file"] == str(tmp_path.resolve() / "keys.json")


def test_cli_config_init_show_and_missing(tmp_path, monkeypatch):
    runner = CliRunner()
    path = tmp_path / "t.toml"
    monkeypatch.setenv("SSCARD_CONFIG", str(path))
    missing = runner.invoke(main, ["config", "show"])
    assert missing.exit_code == 12 and "sscard config init" in missing.output and "Traceback" not in missing.output
    unnumbered = runner.invoke(main, ["config", "init"])  # no terminal: the number must be given
    assert unnumbered.exit_code == 2 and "--terminal-number" in unnumbered.output and not path.exists()
    assert runner.invoke(main, ["config", "init", "--terminal-number", "2"]).exit_code == 0 and path.exists()
    again = runner.invoke(main, ["config", "init", "--terminal-number", "2"])
    assert again.exit_code == 12
    shown = runner.invoke(main, ["config", "show", "--json"])
    assert shown.exit_code == 0 and '"region": "330300"' in shown.stdout
