"""One running Asterisk for the IVR: its config, its directories, start, stop and status.

The project's asterisk-conf/ and dialplan/ are rendered into the instance's own etc
directory (``{{name}}`` placeholders filled from the settings), never into the system's
/etc/asterisk, so a system Asterisk keeps its own config.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..secrets import ami_secret
from .install import AsteriskInstall, AsteriskSetupError, log

# How long the pid file may name no live process before a starting Asterisk counts as
# exited (see wait_for_ami).
START_EXIT_GRACE = 5.0

# The AMI user of the end-to-end tests' phone (ivr.testing.phone), rendered into
# manager.conf only when an instance is given its secret (AsteriskInstance.harness_secret).
# It needs more than the server: it originates calls into any context, types keys, hangs
# up and records (MixMonitor, class "system"), and reads the AGI and dialplan events.
HARNESS_AMI_USER = "ivr-test-phone"
HARNESS_SECTION = """
; The end-to-end tests' phone: test instances only, with a random secret.
[{user}]
secret = {secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = system,call,agi,cdr,dialplan,originate,reporting,user
write = system,call,originate,reporting
writetimeout = 1000
"""

# The tests' SIP user agents, rendered into pjsip.conf only for an instance that asks for
# it (AsteriskInstance.test_trunk): every request from loopback is this endpoint, and its
# calls land in the inbound context like a carrier's. Never in an operator's instance.
TEST_TRUNK_ENDPOINT = "ivr-test-trunk"
TEST_TRUNK_SECTION = """
; The tests' SIP user agents: test instances only. Requests from loopback are this trunk.
[{name}]
type = endpoint
transport = transport-udp
context = ivr-sip-inbound
disallow = all
allow = ulaw,alaw,g722
dtmf_mode = rfc4733
direct_media = no
rtp_symmetric = yes

[{name}]
type = identify
endpoint = {name}
match = 127.0.0.1
"""

# The trunks' and phones' PJSIP objects, written from the database by ivr.sip (mode 0600:
# trunk passwords) and included by pjsip.conf; the render leaves it alone.
SIP_OBJECTS_FILE = "pjsip-objects.conf"

# The lines a called number may reach over SIP (setting sip_lines) and their contexts.
SIP_LINE_CONTEXTS = {"access": "ivr-access", "operator": "ivr-operator",
                     "revalue": "ivr-revalue"}
# Lines that exist in the product's plan but not in this version: a clear error.
SIP_LINES_TO_COME: dict[str, str] = {}


def sip_line_routes(spec: str) -> dict[str, str]:
    """Parse the sip_lines setting (``number=line,...``) into number -> dialplan context.

    Numbers are digits only: they become dialplan extensions, and the inbound context
    looks up only a called number made of digits (dialplan/ivr-sip.conf)."""
    routes: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        number, sep, line = (part.strip() for part in item.partition("="))
        # two digits at least: the inbound context's pattern is _X. (dialplan/ivr-sip.conf)
        if not sep or not number.isdigit() or not number.isascii() or len(number) < 2:
            raise AsteriskSetupError(
                f"sip_lines: {item!r} is not NUMBER=LINE with a number of 2 or more digits")
        if line in SIP_LINES_TO_COME:
            raise AsteriskSetupError(f"sip_lines: {number}={line}: {SIP_LINES_TO_COME[line]}")
        if line not in SIP_LINE_CONTEXTS:
            raise AsteriskSetupError(
                f"sip_lines: {number}={line}: unknown line (one of "
                f"{', '.join(sorted(SIP_LINE_CONTEXTS))})")
        if number in routes:
            raise AsteriskSetupError(f"sip_lines: {number} is given twice")
        routes[number] = SIP_LINE_CONTEXTS[line]
    return routes


def sip_lines_dialplan(spec: str) -> str:
    """The [ivr-sip-lines] extensions: one per called number, to its line's entry."""
    return "\n".join(f"exten => {number},1,Goto({context},s,1)"
                      for number, context in sip_line_routes(spec).items())


def sip_external_lines(address: str) -> str:
    """A transport's NAT lines: the public address in SIP headers and in SDP."""
    if not address:
        return ""
    if any(c in address for c in "\n\r;[] "):
        raise AsteriskSetupError(f"sip_external_address: {address!r} is not an address")
    return (f"external_signaling_address = {address}\n"
            f"external_media_address = {address}")


def sip_bind_value(bind: str) -> str:
    """The transports' bind address: host:port, nothing that could end the config line."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or any(c in bind for c in "\n\r; "):
        raise AsteriskSetupError(f"sip_bind: {bind!r} is not host:port")
    return bind


def project_dir() -> Path:
    """The checkout holding asterisk-conf/ and dialplan/ (the package's parent)."""
    here = Path(__file__).resolve().parents[2]
    if (here / "asterisk-conf").is_dir() and (here / "dialplan").is_dir():
        return here
    raise AsteriskSetupError(
        f"asterisk-conf/ and dialplan/ not found next to the ivr package ({here}); "
        "install the project from its checkout (pip install -e .)"
    )


def render_template(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise AsteriskSetupError(f"unfilled placeholder {text[start:start + 40]!r}")
    return text


@dataclass
class AsteriskInstance:
    settings: Settings
    install: AsteriskInstall
    source_dir: Path | None = None
    # The test phone's AMI secret (user HARNESS_AMI_USER); empty: no such user.
    harness_secret: str = ""
    # Render the tests' SIP trunk (TEST_TRUNK_SECTION): test instances only.
    test_trunk: bool = False

    # ------------------------------------------------------------------ layout

    @property
    def base(self) -> str:
        """The instance directory as Asterisk sees it (inside the sandbox root)."""
        name = self.settings.asterisk_instance
        if self.install.root is not None:
            return f"/ivr/{name}"
        return str((self.settings.data_dir / "asterisk" / name).resolve())

    @property
    def etc_dir(self) -> str:
        return f"{self.base}/etc"

    @property
    def state_dir(self) -> str:
        return f"{self.base}/state"

    @property
    def conf_file(self) -> str:
        return f"{self.etc_dir}/asterisk.conf"

    def host(self, inner: str) -> Path:
        return self.install.host_path(inner)

    @property
    def pid_file(self) -> Path:
        return self.host(f"{self.state_dir}/run/asterisk.pid")

    @property
    def log_file(self) -> Path:
        return self.host(f"{self.state_dir}/log/messages.log")

    @property
    def prompts_dir(self) -> str:
        """The voice-prompt store as Asterisk sees it (``host()`` maps it): the instance's
        ``prompts/`` inside the sandbox root, ``data_dir/prompts`` for a system Asterisk."""
        if self.install.root is not None:
            return f"{self.base}/prompts"
        return str((self.settings.data_dir / "prompts").resolve())

    # ------------------------------------------------------------------ config

    def render(self) -> None:
        """Write asterisk-conf/ and dialplan/ into the instance's etc directory."""
        src = self.source_dir or project_dir()
        etc = self.host(self.etc_dir)
        dialplan_dst = etc / "dialplan"
        for sub in ("db", "spool", "run", "log"):
            self.host(f"{self.state_dir}/{sub}").mkdir(parents=True, exist_ok=True)
        dialplan_dst.mkdir(parents=True, exist_ok=True)
        for old in list(etc.glob("*.conf")) + list(dialplan_dst.glob("*.conf")):
            if old.name != SIP_OBJECTS_FILE:  # written from the database (ivr.sip)
                old.unlink()
        dialplan_files = sorted((src / "dialplan").glob("*.conf"))
        s = self.settings
        values = {
            "etc_dir": self.etc_dir,
            "mod_dir": self.install.mod_dir,
            "data_dir": self.install.data_dir,
            "varlib_dir": f"{self.base}/varlib",
            "state_dir": self.state_dir,
            "ami_host": s.ami_host,
            "ami_port": str(s.ami_port),
            "ami_user": s.ami_user,
            "ami_secret": ami_secret(s),
            "ami_harness_user": HARNESS_SECTION.format(
                user=HARNESS_AMI_USER, secret=self.harness_secret
            ) if self.harness_secret else "",
            "agi_host": s.agi_host if s.agi_host not in ("0.0.0.0", "::") else "127.0.0.1",
            "agi_port": str(s.agi_port),
            "moh_dir": f"{self.base}/moh",
            "sip_bind": sip_bind_value(s.sip_bind),
            "sip_external": sip_external_lines(s.sip_external_address),
            "sip_test_trunk": TEST_TRUNK_SECTION.format(name=TEST_TRUNK_ENDPOINT)
            if self.test_trunk else "",
            "sip_lines": sip_lines_dialplan(s.sip_lines),
            "rtp_start": str(s.rtp_start),
            "rtp_end": str(s.rtp_end),
            "dialplan_includes": "\n".join(
                f"#include {self.etc_dir}/dialplan/{p.name}" for p in dialplan_files
            ),
        }
        self.host(values["varlib_dir"]).mkdir(parents=True, exist_ok=True)
        for conf in sorted((src / "asterisk-conf").glob("*.conf")):
            text = render_template(conf.read_text(), values)
            if conf.name == "manager.conf":
                write_private(etc / conf.name, text)  # holds the AMI secrets
            else:
                (etc / conf.name).write_text(text)
        for conf in dialplan_files:  # ivr-sip.conf has the lines of sip_lines
            (dialplan_dst / conf.name).write_text(render_template(conf.read_text(), values))
        make_hold_music(self.host(values["moh_dir"]))

    # ------------------------------------------------------------------ process

    def _cli_argv(self, command: str) -> list[str]:
        return self.install.argv("-C", self.conf_file, "-rx", command)

    def cli(self, command: str, timeout: float = 20) -> str:
        result = subprocess.run(
            self._cli_argv(command), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AsteriskSetupError(f"asterisk -rx {command!r}: {result.stderr.strip()}")
        return result.stdout

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 60, *, prompts: bool = False) -> None:
        """Render the config and start Asterisk (or reload it when it already runs), then
        wait until AMI accepts our login. ``prompts``: first make offline speech for the
        catalogue prompts the instance's store lacks (see :meth:`build_prompts`)."""
        self.render()
        if prompts:
            self.build_prompts()
        if self.running():
            log.info("Asterisk already running (pid %s); reloading config", self.pid())
            self.cli("core reload")
        else:
            if _port_in_use(self.settings.ami_host, self.settings.ami_port):
                raise AsteriskSetupError(
                    f"AMI port {self.settings.ami_host}:{self.settings.ami_port} is taken by "
                    "another process; set IVR_AMI_PORT or stop it"
                )
            log.info("starting Asterisk (%s) with %s", self.install.kind, self.conf_file)
            # Without -f Asterisk daemonizes itself; -n: no colour codes in its logs.
            result = subprocess.run(
                self.install.argv("-n", "-C", self.conf_file),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0:
                raise AsteriskSetupError(
                    f"asterisk did not start ({result.returncode}): {result.stderr.strip()}"
                )
            try:
                self.wait_for_ami(timeout)
            except AsteriskSetupError:
                self.stop()  # never leave a half-started Asterisk holding the ports
                raise
            return
        self.wait_for_ami(timeout)

    def build_prompts(self) -> None:
        """Speech for the voice prompts missing from this instance's store (espeak-ng,
        offline; quick when none is missing), so calls play them rather than "service
        unavailable". Without a speech engine: a warning naming the command, and no build."""
        from ..prompts import CatalogueError, ManifestError, PromptStore
        from ..prompts.audio import AudioError
        from ..prompts.build import build_missing

        store = PromptStore.for_instance(self)
        try:
            report = build_missing(store)
        except (AudioError, CatalogueError, ManifestError, OSError) as exc:
            log.warning("voice prompts not built in %s (%s): calls hear 'service unavailable' "
                        "until `ivr prompts build` makes them", store.host_dir, exc)
            return
        if report.made:
            log.info("voice prompts in %s: %s", store.host_dir, report.summary())

    def check_ami(self) -> None:
        """Log in to this instance's AMI with the configured user and secret."""
        s = self.settings
        ami_login_check(s.ami_host, s.ami_port, s.ami_user, ami_secret(s))

    def wait_for_ami(self, timeout: float, exit_grace: float = START_EXIT_GRACE) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        gone_since: float | None = None
        while time.monotonic() < deadline:
            try:
                self.check_ami()
                if self._fully_booted():
                    return
                last = "Asterisk not fully booted"
            except (OSError, AsteriskSetupError) as exc:
                last = str(exc)
            # Asterisk writes its pid file, daemonizes, and only then does the child write
            # its own pid: for a moment the file names the parent, which has exited. On a
            # loaded machine that moment is long enough to see, so "exited" must last.
            if self.running():
                gone_since = None
            else:
                now = time.monotonic()
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= exit_grace:
                    raise AsteriskSetupError(
                        f"Asterisk exited during start; see {self.log_file}\n{self.log_tail()}"
                    )
            time.sleep(0.2)
        raise AsteriskSetupError(f"AMI did not answer within {timeout}s: {last}")

    def _fully_booted(self) -> bool:
        try:
            return "fully booted" in self.cli("core waitfullybooted", timeout=10).lower()
        except (AsteriskSetupError, subprocess.TimeoutExpired):
            return False

    def stop(self, timeout: float = 20) -> bool:
        """Stop Asterisk; returns False when it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            self.cli("core stop now", timeout=timeout)
        except (AsteriskSetupError, subprocess.TimeoutExpired):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            time.sleep(0.1)
        if self.running():
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        info: dict[str, object] = {
            "kind": self.install.kind,
            "root": str(self.install.root) if self.install.root else None,
            "instance": self.settings.asterisk_instance,
            "config": str(self.host(self.conf_file)),
            "running": pid is not None,
            "pid": pid,
            "ami": f"{self.settings.ami_host}:{self.settings.ami_port}",
        }
        if pid is not None:
            try:
                self.check_ami()
                info["ami_answers"] = True
            except (OSError, AsteriskSetupError) as exc:
                info["ami_answers"] = False
                info["ami_error"] = str(exc)
            try:
                info["version"] = self.cli("core show version").strip()
            except (AsteriskSetupError, subprocess.TimeoutExpired) as exc:
                info["version"] = f"unknown ({exc})"
        return info

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only, from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_TRUNC
        f.write(text)


def make_hold_music(directory: Path) -> None:
    """The default music-on-hold class plays files from ``directory``; the sandbox has no
    MOH package, so a soft 8 kHz chord is made with sox once. A real install may put
    its own files there (any file already present is kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    target = directory / "ivr-hold.wav"
    try:
        subprocess.run(
            ["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(target),
             "synth", "20", "sine", "262", "sine", "330", "sine", "392",
             "remix", "-", "tremolo", "0.5", "40", "vol", "0.3"],
            check=True, capture_output=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("no hold music made in %s (%s): held parties hear silence", directory, exc)
        target.unlink(missing_ok=True)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ami_login_check(host: str, port: int, user: str, secret: str, timeout: float = 3) -> None:
    """Log in to AMI and log off: raises OSError when nothing answers, AsteriskSetupError
    when the login is refused."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        stream = sock.makefile("rwb")
        banner = stream.readline()
        if not banner.startswith(b"Asterisk Call Manager"):
            raise AsteriskSetupError(f"not an AMI banner: {banner[:60]!r}")
        stream.write(
            f"Action: Login\r\nUsername: {user}\r\nSecret: {secret}\r\nEvents: off\r\n\r\n".encode()
        )
        stream.flush()
        reply: list[bytes] = []
        while True:
            line = stream.readline()
            if not line or line in (b"\r\n", b"\n"):
                break
            reply.append(line)
        text = b"".join(reply).decode(errors="replace")
        if "Response: Success" not in text:
            raise AsteriskSetupError(f"AMI login refused: {text.strip()}")
        stream.write(b"Action: Logoff\r\n\r\n")
        stream.flush()
