"""Bringing up and controlling the Asterisk the IVR runs on."""

from ..config import Settings
from .install import AsteriskInstall, AsteriskSetupError, resolve_install
from .instance import AsteriskInstance, ami_login_check


def instance_for(settings: Settings, *, build: bool = True) -> AsteriskInstance:
    """The Asterisk instance the settings describe; builds the sandbox when needed."""
    install = resolve_install(settings.asterisk_mode, settings.asterisk_sandbox_dir, build=build)
    return AsteriskInstance(settings, install)


__all__ = [
    "AsteriskInstall",
    "AsteriskInstance",
    "AsteriskSetupError",
    "ami_login_check",
    "instance_for",
    "resolve_install",
]
