"""AMI against the real Asterisk: nobody logs in with the once-published secret, and the
server's AMI user cannot make Asterisk run a shell command, while every action the
server sends still works with the classes it has."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivr.ami import AmiActionError, AmiClient
from ivr.asterisk import AsteriskInstance, ami_login_check
from ivr.asterisk.install import AsteriskSetupError
from ivr.config import load_settings
from ivr.live.calls import ASTDB_FAMILY
from ivr.live.recovery import forget_record
from ivr.secrets import AMI_SECRET_FILE
from ivr.testing import free_port

pytestmark = pytest.mark.asterisk

PUBLISHED = "ivr-sandbox-secret"


def shell_actions(proof: str) -> list[dict[str, str]]:
    """Actions that would make Asterisk (root in the sandbox) run `id > proof`."""
    agi = {"Action": "Originate", "Channel": "Local/s@ivr-test-caller/n", "Application": "AGI",
           "Data": f"/bin/sh,-c,id > {proof}", "Timeout": "5000"}
    return [
        agi,
        agi | {"Async": "true"},
        {"Action": "Command", "Command": "core show version"},
    ]


def probe_path(instance: AsteriskInstance) -> tuple[str, Path]:
    """A file name as Asterisk sees it, and the same file on this host."""
    inner = f"/tmp/ivr-ami-probe-{secrets.token_hex(6)}"
    return inner, instance.host(inner)


async def test_a_fresh_instance_refuses_the_published_secret_and_shell_commands(
    asterisk: AsteriskInstance, tmp_path: Path,
):
    # `ivr asterisk up` as `bash scripts/run` runs it: nothing configured (no file, no
    # IVR_* variable), on its own instance and ports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    env.update(
        IVR_ASTERISK_INSTANCE=f"test-{os.getpid()}-fresh",
        IVR_AMI_PORT=str(free_port()),
        IVR_AGI_PORT=str(free_port()),
        IVR_ASTERISK_SANDBOX_DIR=str(asterisk.settings.asterisk_sandbox_dir),
        IVR_DATA_DIR=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path),
    )
    settings = load_settings(environ=env)
    fresh = AsteriskInstance(settings, asterisk.install)
    try:
        up = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "ivr.cli", "asterisk", "up"], env=env,
            cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
        assert up.returncode == 0, up.stderr
        with pytest.raises(AsteriskSetupError, match="Authentication failed"):
            ami_login_check(settings.ami_host, settings.ami_port, settings.ami_user, PUBLISHED)
        secret_file = tmp_path / "data" / AMI_SECRET_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        conf = fresh.host(fresh.etc_dir) / "manager.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        # The generated secret is the server's: it logs in, but cannot run a shell.
        ami = AmiClient(settings.ami_host, settings.ami_port, settings.ami_user,
                        secret_file.read_text().strip())
        await ami.connect(timeout=15)
        try:
            inner, proof = probe_path(fresh)
            for headers in shell_actions(inner):
                name = headers.pop("Action")
                with pytest.raises(AmiActionError, match="Forbidden|Permission denied"):
                    await ami.action(name, **headers)
            assert not proof.exists()
        finally:
            await ami.close()
    finally:
        fresh.stop()
        shutil.rmtree(fresh.host(fresh.base), ignore_errors=True)


async def test_the_server_user_runs_no_shell_but_sends_every_action_the_server_needs(
    asterisk: AsteriskInstance, server_ami: AmiClient, ami: AmiClient,
):
    inner, proof = probe_path(asterisk)
    for headers in shell_actions(inner):
        name = headers.pop("Action")
        with pytest.raises(AmiActionError, match="Forbidden|Permission denied"):
            await server_ami.action(name, **headers)
    with pytest.raises(AmiActionError, match="Permission denied"):  # class "system"
        await server_ami.action("DBDel", Family=ASTDB_FAMILY, Key="any")
    assert not proof.exists()

    # Setvar and Getvar (the call controller: limits, recovery: channel variables).
    name = f"IVR_PROBE_{secrets.token_hex(4).upper()}"
    await server_ami.action("Setvar", Variable=name, Value="1")
    assert (await server_ami.action("Getvar", Variable=name)).get("Value") == "1"
    # DBGet, then forgetting the record (recovery), on a record the dialplan would write.
    key = f"probe-{secrets.token_hex(4)}"
    await ami.action("DBPut", Family=ASTDB_FAMILY, Key=key, Val="ANSWER,1000")
    reply = await server_ami.action("DBGet", Family=ASTDB_FAMILY, Key=key)
    assert [m.get("Val") for m in reply if m.get("Event") == "DBGetResponse"] == ["ANSWER,1000"]
    await forget_record(server_ami, key)
    deadline = time.monotonic() + 5
    while True:
        try:
            await server_ami.action("DBGet", Family=ASTDB_FAMILY, Key=key)
        except AmiActionError as exc:
            assert "not found" in str(exc)
            break
        assert time.monotonic() < deadline, "the record was not forgotten"
        await asyncio.sleep(0.05)
    # MessageSend (SMS notices): allowed; this sandbox has no SIP channel to send it on.
    with pytest.raises(AmiActionError) as refused:
        await server_ami.action("MessageSend", To="pjsip:15550001111", Body="probe")
    assert "permission" not in str(refused.value).lower()
