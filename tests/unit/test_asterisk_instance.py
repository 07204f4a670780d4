"""Starting an Asterisk: the pid file's daemonize gap is not an exit; a real exit is."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ivr.asterisk import AsteriskInstance
from ivr.asterisk.install import AsteriskInstall, AsteriskSetupError
from ivr.config import load_settings


@pytest.fixture
def instance(tmp_path, monkeypatch) -> AsteriskInstance:
    settings = load_settings(environ={}).replace(data_dir=tmp_path, asterisk_instance="t")
    system = AsteriskInstall("system", None, "/usr/sbin/asterisk", "/mods", "/usr/share")
    inst = AsteriskInstance(settings, system)
    inst.pid_file.parent.mkdir(parents=True)
    monkeypatch.setattr(inst, "_fully_booted", lambda: True)
    return inst


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_pid_file_naming_the_exited_parent_for_a_moment_is_not_an_exit(instance, monkeypatch):
    # As after daemon(): the file holds the parent's pid, then the child's.
    instance.pid_file.write_text(f"{_dead_pid()}\n")
    up = threading.Event()

    def ami_answers() -> None:
        if not up.is_set():
            raise ConnectionRefusedError("not yet")

    monkeypatch.setattr(instance, "check_ami", ami_answers)

    def child_rewrites_pid() -> None:
        time.sleep(1.0)
        instance.pid_file.write_text(f"{os.getpid()}\n")
        time.sleep(0.3)
        up.set()

    threading.Thread(target=child_rewrites_pid).start()
    instance.wait_for_ami(timeout=10, exit_grace=3)
    assert up.is_set()


def test_an_asterisk_that_really_exited_is_reported_with_its_log(instance, monkeypatch):
    instance.pid_file.write_text(f"{_dead_pid()}\n")
    instance.log_file.parent.mkdir(parents=True)
    instance.log_file.write_text("ERROR: something in modules.conf\n")

    def refused() -> None:
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(instance, "check_ami", refused)
    started = time.monotonic()
    with pytest.raises(AsteriskSetupError, match="exited during start(.|\n)*modules.conf"):
        instance.wait_for_ami(timeout=30, exit_grace=0.5)
    assert time.monotonic() - started < 5
