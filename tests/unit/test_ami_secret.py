"""The AMI secret: random and private when none is configured, the published default refused,
and manager.conf (which holds it) never readable by others, not even for a moment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.asterisk import AsteriskInstance
from ivr.asterisk.install import AsteriskInstall
from ivr.asterisk.instance import HARNESS_AMI_USER
from ivr.config import ConfigError, load_settings
from ivr.secrets import AMI_SECRET_FILE, ami_secret
from ivr.testing import free_port

PUBLISHED = "ivr-sandbox-secret"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask: only the modes the code asks for protect the files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_generated_secret_is_private_random_and_stable(tmp_path, umask_zero):
    settings = load_settings(environ={}).replace(data_dir=tmp_path / "data")
    assert settings.ami_secret == ""
    first = ami_secret(settings)
    assert first == ami_secret(settings) == ami_secret(settings.replace(log_level="DEBUG"))
    assert len(first) == 48 and int(first, 16) >= 0
    path = tmp_path / "data" / AMI_SECRET_FILE
    assert path.read_text().strip() == first
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [AMI_SECRET_FILE]  # no draft left
    other = ami_secret(settings.replace(data_dir=tmp_path / "other"))
    assert other != first


def test_a_configured_secret_is_used_as_is_and_nothing_is_written(tmp_path):
    settings = load_settings(environ={"IVR_AMI_SECRET": "my-own"}).replace(data_dir=tmp_path)
    assert ami_secret(settings) == "my-own"
    assert not (tmp_path / AMI_SECRET_FILE).exists()


def test_the_published_default_is_refused(tmp_path):
    settings = load_settings(environ={"IVR_AMI_SECRET": PUBLISHED}).replace(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="old published default"):
        ami_secret(settings)


def test_ivr_serve_refuses_to_start_with_the_published_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    env.update(IVR_AMI_SECRET=PUBLISHED, IVR_DATA_DIR=str(tmp_path / "data"),
               IVR_AGI_PORT=str(free_port()), XDG_CONFIG_HOME=str(tmp_path),
               IVR_WEB_BIND="127.0.0.1:0")
    result = subprocess.run([sys.executable, "-m", "ivr.cli", "serve"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("ivr: ami_secret is the old published default")
    assert len(result.stderr.strip().splitlines()) == 1
    assert PUBLISHED not in result.stderr


def _instance(tmp_path: Path, **changes: object) -> AsteriskInstance:
    settings = load_settings(environ={}).replace(data_dir=tmp_path, asterisk_instance="t",
                                                 **changes)
    system = AsteriskInstall("system", None, "/usr/sbin/asterisk", "/mods", "/usr/share")
    return AsteriskInstance(settings, system)


@pytest.fixture
def watch_manager_conf(tmp_path) -> Iterator[list[int]]:
    """The modes manager.conf had each time the process opened or chmod'ed a file while
    it existed (a Python audit hook: it sees every open and chmod, whoever makes them)."""
    target = tmp_path / "asterisk" / "t" / "etc" / "manager.conf"
    seen: list[int] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event in ("open", "os.chmod") and target.exists():
            seen.append(mode(target))

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet after the test
    try:
        yield seen
    finally:
        active[0] = False


def test_manager_conf_is_created_private(tmp_path, umask_zero, watch_manager_conf):
    instance = _instance(tmp_path)
    instance.render()
    conf = instance.host(instance.etc_dir) / "manager.conf"
    # Seen at the next file operations after its creation (the other config files), and
    # never with any permission for the group or others.
    assert watch_manager_conf, "manager.conf was never observed"
    assert set(watch_manager_conf) == {0o600}
    assert mode(conf) == 0o600
    text = conf.read_text()
    assert f"secret = {ami_secret(instance.settings)}\n" in text
    assert PUBLISHED not in text and HARNESS_AMI_USER not in text
    # Rendering again (ivr asterisk up on a running instance) keeps it private.
    instance.render()
    assert mode(conf) == 0o600


def test_the_server_user_has_no_system_nor_command_class_and_the_harness_is_separate(tmp_path):
    instance = _instance(tmp_path, ami_secret="server-secret")
    instance.harness_secret = "harness-secret"
    instance.render()
    text = (instance.host(instance.etc_dir) / "manager.conf").read_text()
    sections = {}
    for block in text.split("\n[")[1:]:
        name, _, body = block.partition("]")
        sections[name] = dict(
            line.split(" = ", 1) for line in body.splitlines() if " = " in line
        )
    server = sections[instance.settings.ami_user]
    assert server["secret"] == "server-secret"
    for kind in ("read", "write"):
        classes = set(server[kind].split(","))
        assert not classes & {"system", "command", "all", "agi", "dtmf", "config"}, kind
    assert sections[HARNESS_AMI_USER]["secret"] == "harness-secret"


def test_an_emptied_secret_file_is_refused_not_used(tmp_path):
    settings = load_settings(environ={}).replace(data_dir=tmp_path)
    ami_secret(settings)
    (tmp_path / AMI_SECRET_FILE).write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        ami_secret(settings)
