"""Finding an Asterisk to run: the system's, or a Debian sid sandbox root we build once.

Debian 12 ships no Asterisk; sid has 22 LTS. ``debootstrap`` builds a minimal sid root with
Asterisk and the English and Spanish core sounds (~500 MB, about a minute with a local
mirror) in the cache directory, outside the repository; later runs reuse it, adding with
apt any package a newer version of this list names. Asterisk then runs in that
root with ``chroot``; it shares the host's network, so AMI and FastAGI on 127.0.0.1 work
from both sides.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ivr.asterisk")

# The core sounds say numbers in each catalogue language (SAY NUMBER); "-es" makes the
# sounds/es link, "-es-gsm" holds the files.
SANDBOX_PACKAGES = ("asterisk", "asterisk-core-sounds-en-gsm", "asterisk-core-sounds-es",
                    "asterisk-core-sounds-es-gsm")
SANDBOX_SUITE = "sid"
READY_MARK = ".ivr-sandbox-ready"
SUPPORTED_MAJORS = (20, 21, 22, 23)


class AsteriskSetupError(RuntimeError):
    """No usable Asterisk and none could be built; the message says what to do."""


@dataclass(frozen=True)
class AsteriskInstall:
    kind: str  # "system" or "sandbox"
    root: Path | None  # chroot root for a sandbox, None for the system
    binary: str  # path of the asterisk binary, inside root when there is one
    mod_dir: str  # module directory, inside root
    data_dir: str  # astdatadir (sounds live in its sounds/), inside root

    def host_path(self, inner: str | Path) -> Path:
        """Where a path inside the install is on the host."""
        if self.root is None:
            return Path(inner)
        return self.root / str(inner).lstrip("/")

    def argv(self, *args: str) -> list[str]:
        prefix = ["chroot", str(self.root)] if self.root is not None else []
        return [*prefix, self.binary, *args]

    def version(self) -> str:
        out = subprocess.run(self.argv("-V"), capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def major(self) -> int | None:
        match = re.search(r"Asterisk (\d+)", self.version())
        return int(match.group(1)) if match else None


def _module_dir(host_root: Path) -> str:
    for candidate in (
        "usr/lib/x86_64-linux-gnu/asterisk/modules",
        "usr/lib/aarch64-linux-gnu/asterisk/modules",
        "usr/lib/asterisk/modules",
        "usr/lib64/asterisk/modules",
    ):
        if (host_root / candidate / "res_agi.so").exists():
            return "/" + candidate
    matches = sorted(host_root.glob("usr/lib*/**/asterisk/modules/res_agi.so"))
    if matches:
        return "/" + str(matches[0].parent.relative_to(host_root))
    raise AsteriskSetupError(f"no Asterisk modules (res_agi.so) under {host_root}")


def _data_dir(host_root: Path) -> str:
    for candidate in ("usr/share/asterisk", "var/lib/asterisk"):
        if (host_root / candidate / "sounds").exists():
            return "/" + candidate
    return "/usr/share/asterisk"


def find_system_asterisk() -> AsteriskInstall | None:
    binary = shutil.which("asterisk")
    if binary is None:
        return None
    root = Path("/")
    install = AsteriskInstall("system", None, binary, _module_dir(root), _data_dir(root))
    major = install.major()
    if major is not None and major not in SUPPORTED_MAJORS:
        log.warning("system Asterisk %s is not a supported LTS line (20/22)", major)
    return install


def sandbox_install(root: Path) -> AsteriskInstall:
    binary = "/usr/sbin/asterisk"
    return AsteriskInstall("sandbox", root, binary, _module_dir(root), _data_dir(root))


def sandbox_ready(root: Path) -> bool:
    return (root / READY_MARK).exists() and (root / "usr/sbin/asterisk").exists()


def sandbox_missing(root: Path) -> list[str]:
    """Packages of SANDBOX_PACKAGES a finished sandbox was built without (its mark lists
    what it has; a mark from before the list was kept names the first two)."""
    lines = (root / READY_MARK).read_text().split("\n", 1)
    have = set(lines[1].split()) if len(lines) > 1 and lines[1].strip() else set(
        SANDBOX_PACKAGES[:2])
    return [p for p in SANDBOX_PACKAGES if p not in have]


def _mark_ready(root: Path, packages: list[str] | tuple[str, ...]) -> None:
    (root / READY_MARK).write_text(f"{SANDBOX_SUITE}\n{' '.join(packages)}\n")


def update_sandbox(root: Path) -> None:
    """Add the packages a sandbox lacks, under the build lock. Without the network the
    sandbox is used as it is (logged): Asterisk falls back to English sounds."""
    with _build_lock(root):
        missing = sandbox_missing(root)
        if not missing:
            return
        if os.geteuid() != 0:
            log.warning("the Asterisk sandbox lacks %s; run as root to add them",
                        " ".join(missing))
            return
        log.info("adding %s to the Asterisk sandbox", " ".join(missing))
        # sid's mirror may serve an expired Release file: check signatures, not dates.
        apt = ["chroot", str(root), "apt-get", "-o", "Acquire::Check-Valid-Until=false"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*apt, "update", "-qq"], capture_output=True, text=True, env=env)
        result = subprocess.run([*apt, "install", "-y", "-qq", "--no-install-recommends",
                                 *missing], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            log.warning("could not add %s to the Asterisk sandbox: %s", " ".join(missing),
                        result.stderr.strip()[-500:])
            return
        _mark_ready(root, SANDBOX_PACKAGES)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_sandbox(root: Path, *, mirror: str | None = None) -> AsteriskInstall:
    """Build the sid root with debootstrap unless a finished one is there.

    Built in ``<root>.partial`` and renamed when complete, under a lock, so an interrupted
    or concurrent build never leaves a half root that looks ready.
    """
    with _build_lock(root):
        if sandbox_ready(root):
            return sandbox_install(root)
        if os.geteuid() != 0:
            raise AsteriskSetupError(
                "building the Asterisk sandbox needs root (debootstrap and chroot); "
                "run as root, or install Asterisk 20/22 and set asterisk_mode = system"
            )
        debootstrap = shutil.which("debootstrap") or _apt_install_debootstrap()
        partial = root.with_name(root.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        cmd = [
            debootstrap,
            "--variant=minbase",
            "--include=" + ",".join(SANDBOX_PACKAGES),
            SANDBOX_SUITE,
            str(partial),
        ]
        if mirror:
            cmd.append(mirror)
        log.info("building the Asterisk sandbox (Debian %s) in %s", SANDBOX_SUITE, root)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise AsteriskSetupError(f"debootstrap failed ({result.returncode}):\n{tail}")
        if root.exists():
            shutil.rmtree(root)
        partial.rename(root)
        _mark_ready(root, SANDBOX_PACKAGES)
        return sandbox_install(root)


def _apt_install_debootstrap() -> str:
    log.info("installing debootstrap with apt-get")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise AsteriskSetupError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")
    path = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(path).exists():
        raise AsteriskSetupError("debootstrap is not available after apt-get install")
    return path


def resolve_install(mode: str, sandbox_dir: Path, *, build: bool = True) -> AsteriskInstall:
    """auto: the system Asterisk when there is one, else the sandbox (built if needed)."""
    if mode not in ("auto", "system", "sandbox"):
        raise AsteriskSetupError(f"asterisk_mode must be auto, system or sandbox, not {mode!r}")
    if mode in ("auto", "system"):
        system = find_system_asterisk()
        if system is not None:
            return system
        if mode == "system":
            raise AsteriskSetupError("asterisk_mode = system but no asterisk binary on PATH")
    if sandbox_ready(sandbox_dir):
        if build and sandbox_missing(sandbox_dir):
            update_sandbox(sandbox_dir)
        return sandbox_install(sandbox_dir)
    if not build:
        raise AsteriskSetupError(f"no Asterisk sandbox in {sandbox_dir}; run `ivr asterisk up`")
    return build_sandbox(sandbox_dir)
