"""The `ivr` command as a user runs it: asterisk up/status/down, and serve with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys

import pytest

from ivr.asterisk import AsteriskInstance
from ivr.config import Settings
from ivr.prompts import PromptStore, load_catalogue
from ivr.testing import free_port
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk


def run_ivr(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ivr.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_help_lists_the_subcommands():
    out = run_ivr("--help", env=dict(os.environ)).stdout
    for command in ("serve", "run", "asterisk", "config"):
        assert command in out


def test_asterisk_up_status_down(asterisk, test_settings: Settings, tmp_path):
    # A third instance beside the test one, as a user would run it, configured by env only.
    env = dict(os.environ)
    env.update(
        IVR_ASTERISK_INSTANCE=f"test-{os.getpid()}-cli",
        IVR_AMI_PORT=str(free_port()),
        IVR_AGI_PORT=str(free_port()),
        IVR_AMI_SECRET=secrets.token_hex(8),
        IVR_ASTERISK_SANDBOX_DIR=str(test_settings.asterisk_sandbox_dir),
        IVR_DATA_DIR=str(tmp_path),
        IVR_WEB_BIND="127.0.0.1:0",
    )
    up = run_ivr("asterisk", "up", "--json", env=env)
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert info["running"] is True and info["ami_answers"] is True
        assert "Asterisk 2" in info["version"]
        assert info["ami"] == f"127.0.0.1:{env['IVR_AMI_PORT']}"
        # A bare start has its voice prompts (offline speech for the missing ones), so
        # its calls play them rather than "service unavailable".
        store = PromptStore.for_instance(AsteriskInstance(
            test_settings.replace(asterisk_instance=env["IVR_ASTERISK_INSTANCE"]),
            asterisk.install))
        assert store.missing(load_catalogue()) == []
        assert store.play_path("welcome", "en") is not None
        status = run_ivr("asterisk", "status", "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == info["pid"]
        # A wrong secret is refused by that Asterisk (the secret really comes from config).
        bad = run_ivr("asterisk", "status", "--json", env={**env, "IVR_AMI_SECRET": "nope"})
        assert json.loads(bad.stdout)["ami_answers"] is False
    finally:
        down = run_ivr("asterisk", "down", env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    after = run_ivr("asterisk", "status", "--json", env=env)
    assert after.returncode == 3 and json.loads(after.stdout)["running"] is False
    shutil.rmtree(asterisk.host(asterisk.base).parent / env["IVR_ASTERISK_INSTANCE"])


async def test_serve_finishes_running_calls_on_sigterm(asterisk, test_settings: Settings,
                                                       phone: Phone, tmp_path):
    env = dict(os.environ, IVR_SHUTDOWN_GRACE="20", IVR_DATA_DIR=str(tmp_path),
               IVR_WEB_BIND="127.0.0.1:0",
               IVR_AMI_PORT=str(test_settings.ami_port), IVR_AMI_SECRET=test_settings.ami_secret)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ivr.cli", "serve", "--port", str(test_settings.agi_port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        while b"FastAGI listening on" not in (
            line := await asyncio.wait_for(server.stdout.readline(), 20)
        ):
            assert line, "serve exited before listening"
        call = await phone.call("ivr-hello")
        await call.wait_for_input()
        server.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # Stopped accepting, but the running call still gets its answers.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", test_settings.agi_port)
        await call.send_dtmf("31#")
        await call.wait_ended()
        assert call.prompts[-2:] == ["digits:31", "goodbye"]
        assert await asyncio.wait_for(server.wait(), 20) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
