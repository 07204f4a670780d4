from pathlib import Path

import pytest

from ivr.config import ConfigError, load_settings


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    s = load_settings(environ={"XDG_DATA_HOME": str(tmp_path)})
    assert s.agi_host == "127.0.0.1" and s.agi_port == 4573
    assert s.ami_host == "127.0.0.1" and s.ami_port == 5038
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_database_url.endswith("ivr.sqlite3")


def test_file_then_environment(tmp_path):
    conf = tmp_path / "ivr.toml"
    conf.write_text(
        'database_url = "postgresql://x/y"\n'
        "[agi]\nport = 4600\nheader_timeout = 2.5\n"
        '[ami]\nsecret = "from-file"\n'
    )
    s = load_settings(conf, environ={"IVR_AGI_PORT": "4700", "IVR_DATA_DIR": str(tmp_path)})
    assert s.agi_port == 4700  # environment wins over the file
    assert s.agi_header_timeout == 2.5
    assert s.ami_secret == "from-file"
    assert s.database_url == "postgresql://x/y"
    assert s.effective_database_url == "postgresql://x/y"
    assert s.data_dir == Path(tmp_path)


def test_database_url_env(tmp_path):
    s = load_settings(environ={"IVR_DATABASE_URL": "sqlite:////tmp/x.db"})
    assert s.effective_database_url == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agi_prot = 1\n", "unknown setting 'agi_prot'"),
        ('agi_port = "many"\n', "agi_port"),
        ("agi_port = [\n", "ivr.toml"),
    ],
)
def test_bad_file_is_a_clear_error(tmp_path, text, message):
    conf = tmp_path / "ivr.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(conf, environ={})


def test_bad_env_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="ami_port"):
        load_settings(environ={"IVR_AMI_PORT": "x"})


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_ivr_config_env_names_the_file(tmp_path):
    conf = tmp_path / "other.toml"
    conf.write_text("agi_port = 4999\n")
    assert load_settings(environ={"IVR_CONFIG": str(conf)}).agi_port == 4999
