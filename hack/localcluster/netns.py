"""Linux namespace plumbing of the process node agent (test infrastructure, not product).

Owns everything the agent does to the host's network and mount tables:

* :class:`PodNetworks`: the agent's Linux bridge and one network namespace per pod, joined to the
  bridge by a veth pair (``eth0`` inside, address from the bridge CIDR, ``lo`` up, default route
  via the bridge address), plus the namespace's ``/etc/netns/<netns>/hosts`` and ``resolv.conf``
  that ``ip netns exec`` bind-mounts over ``/etc``. Every name it creates starts with a prefix
  derived from the node name, so a later run removes what a crashed run left behind.
* :func:`processes_in` / :func:`signal_all`: the processes of a pod are the processes in its
  network namespace. Killing by namespace also reaches children that started their own session
  (torch's elastic launcher does that for every rank), which a process-group kill would miss.
* The in-namespace launcher (:func:`launcher_argv`: ``python -I netns.py launch PLAN.json``
  under ``ip netns exec``): it gives the container a private mount namespace and its own UTS
  namespace (the pod's hostname), bind-mounts the volumes at their ``mountPath``, changes into
  ``workingDir`` and execs the container's command with the pod's environment. A mount path
  that does not exist on the host (``/checkpoints``, ``/etc/acceltrain``) is created only inside
  the pod: the launcher builds a root on a private tmpfs that mirrors the host tree (a bind
  mount per entry) down to the missing directory, creates it there and chroots into that root,
  so the host never sees the path.

Needs root, ``ip`` (iproute2) and a kernel with network, mount and UTS namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("localcluster.nodeagent.netns")

NETNS_RUN_DIR = Path("/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
POD_INTERFACE = "eth0"
# Linux refuses interface names longer than this.
MAX_INTERFACE_NAME = 15
# Shell convention for "command not found / not executable"; the pod's log says which.
EXIT_CANNOT_EXEC = 127

# A resolv.conf without nameserver lines makes the resolver ask 127.0.0.1 inside the pod's
# namespace, which fails at once; the host's resolver would instead time out on an unreachable
# address for every name that is not in the hosts file.
RESOLV_CONF = "# acceltrain process node: names resolve from /etc/hosts only (no cluster DNS)\n"


@dataclass(frozen=True)
class Names:
    """Interface and namespace names of one agent; all start with :attr:`prefix`."""

    prefix: str

    @classmethod
    def for_node(cls, node_name: str, bridge_cidr: str) -> Names:
        """Names of one agent; two clusters' agents of the same node name never share them."""
        key = f"{node_name}/{bridge_cidr}".encode()
        return cls("acn" + hashlib.sha1(key).hexdigest()[:4])

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def netns(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def host_veth(self, index: int) -> str:
        name = f"{self.prefix}v{index}"
        if len(name) > MAX_INTERFACE_NAME:
            raise ValueError(f"interface name {name!r} is longer than {MAX_INTERFACE_NAME} chars")
        return name


@dataclass(frozen=True)
class PodNetwork:
    """The network namespace of one pod."""

    index: int
    netns: str
    host_veth: str
    ip: str


class NetworkSetupError(RuntimeError):
    """The bridge or a pod namespace could not be created; the message says why."""


def run_ip(*args: str) -> str:
    """Run one ``ip`` command and return its stdout; failures name the command and the reason."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkSetupError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def _ip_quietly(*args: str) -> None:
    """Run an ``ip`` command whose failure only means there was nothing to remove."""
    subprocess.run(["ip", *args], capture_output=True, check=False)


class PodNetworks:
    """The agent's bridge and the per-pod network namespaces on it.

    The bridge takes the first address of the CIDR and is the pods' default gateway and the
    node's InternalIP; pods get the following addresses. Addresses are handed out round-robin so
    that a finished pod's IP (still shown in its status) is not reused at once.
    """

    def __init__(self, names: Names, cidr: ipaddress.IPv4Network) -> None:
        if cidr.num_addresses < 4:
            raise ValueError(f"--bridge-cidr {cidr} is too small: use a /30 or larger network")
        self.names = names
        self.cidr = cidr
        self.gateway = str(cidr.network_address + 1)
        self._first_index = 2
        self._last_index = cidr.num_addresses - 2
        self._next_index = self._first_index
        self._in_use: dict[int, PodNetwork] = {}
        self._lock = threading.Lock()
        names.host_veth(self._last_index)  # fail early if the CIDR makes names too long

    @property
    def capacity(self) -> int:
        return self._last_index - self._first_index + 1

    def setup(self) -> None:
        """Remove leftovers of an earlier run, check the CIDR is free, create the bridge."""
        remove_leftovers(self.names.prefix)
        self._check_cidr_is_free()
        bridge = self.names.bridge
        run_ip("link", "add", bridge, "type", "bridge")
        run_ip("addr", "add", f"{self.gateway}/{self.cidr.prefixlen}", "dev", bridge)
        run_ip("link", "set", bridge, "up")
        log.info("bridge %s up with %s/%s", bridge, self.gateway, self.cidr.prefixlen)

    def _check_cidr_is_free(self) -> None:
        for link in json.loads(run_ip("-j", "addr", "show") or "[]"):
            for addr in link.get("addr_info", []):
                if addr.get("family") != "inet":
                    continue
                network = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", False)
                if isinstance(network, ipaddress.IPv4Network) and network.overlaps(self.cidr):
                    raise NetworkSetupError(
                        f"--bridge-cidr {self.cidr} overlaps {addr['local']}/{addr['prefixlen']}"
                        f" on interface {link['ifname']}; pass a --bridge-cidr that no interface"
                        " of this host uses"
                    )

    def create(self) -> PodNetwork:
        """Create a namespace with its own address on the bridge, ``lo`` up, route via bridge."""
        index = self._allocate()
        net = PodNetwork(
            index=index,
            netns=self.names.netns(index),
            host_veth=self.names.host_veth(index),
            ip=str(self.cidr.network_address + index),
        )
        try:
            etc = NETNS_ETC_DIR / net.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(RESOLV_CONF)
            (etc / "hosts").write_text("")
            run_ip("netns", "add", net.netns)
            run_ip(
                "link",
                "add",
                net.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                POD_INTERFACE,
                "netns",
                net.netns,
            )
            run_ip("link", "set", net.host_veth, "master", self.names.bridge, "up")
            run_ip(
                "-n",
                net.netns,
                "addr",
                "add",
                f"{net.ip}/{self.cidr.prefixlen}",
                "dev",
                POD_INTERFACE,
            )
            run_ip("-n", net.netns, "link", "set", POD_INTERFACE, "up")
            run_ip("-n", net.netns, "link", "set", "lo", "up")
            run_ip("-n", net.netns, "route", "add", "default", "via", self.gateway)
        except BaseException:
            self.release(net)
            raise
        with self._lock:
            self._in_use[index] = net
        return net

    def _allocate(self) -> int:
        with self._lock:
            for _ in range(self.capacity):
                index = self._next_index
                self._next_index = index + 1 if index < self._last_index else self._first_index
                if index not in self._in_use:
                    # Reserve it now; create() stores the finished PodNetwork under it.
                    self._in_use[index] = PodNetwork(index, "", "", "")
                    return index
        raise NetworkSetupError(
            f"all {self.capacity} addresses of --bridge-cidr {self.cidr} are in use; "
            "pass a larger CIDR"
        )

    def release(self, net: PodNetwork) -> None:
        """Kill what still runs in the namespace, then delete it, its veth and its /etc files."""
        signal_all(net.netns, signal.SIGKILL)
        _ip_quietly("netns", "delete", net.netns)
        _ip_quietly("link", "delete", net.host_veth)
        shutil.rmtree(NETNS_ETC_DIR / net.netns, ignore_errors=True)
        with self._lock:
            self._in_use.pop(net.index, None)

    def teardown(self) -> None:
        """Release every namespace and delete the bridge."""
        with self._lock:
            nets = [net for net in self._in_use.values() if net.netns]
        for net in nets:
            self.release(net)
        remove_leftovers(self.names.prefix)
        release_netns_dir()


def release_netns_dir() -> None:
    """``ip netns add`` makes /run/netns a mount of its own; once no namespace is left in it,
    the mount and the directory go too, so that the host is left as it was found."""
    if NETNS_RUN_DIR.is_dir() and not any(NETNS_RUN_DIR.iterdir()):
        subprocess.run(["umount", str(NETNS_RUN_DIR)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            NETNS_RUN_DIR.rmdir()


def remove_leftovers(prefix: str) -> None:
    """Delete every namespace, interface and /etc/netns entry whose name starts with prefix."""
    if NETNS_RUN_DIR.is_dir():
        for entry in NETNS_RUN_DIR.iterdir():
            if entry.name.startswith(prefix):
                signal_all(entry.name, signal.SIGKILL)
                _ip_quietly("netns", "delete", entry.name)
    for link in json.loads(run_ip("-j", "link", "show") or "[]"):
        name = str(link.get("ifname", ""))
        if name.startswith(prefix):
            _ip_quietly("link", "delete", name)
    if NETNS_ETC_DIR.is_dir():
        for entry in NETNS_ETC_DIR.iterdir():
            if entry.name.startswith(prefix):
                shutil.rmtree(entry, ignore_errors=True)


def processes_in(netns: str) -> list[int]:
    """The pids of all processes whose network namespace is the named one."""
    try:
        target = os.stat(NETNS_RUN_DIR / netns)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def signal_all(netns: str, sig: signal.Signals) -> int:
    """Send sig to every process in the namespace; returns how many were signalled."""
    count = 0
    for pid in processes_in(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            count += 1
    return count


def write_netns_file(netns: str, name: str, content: str) -> None:
    """Rewrite /etc/netns/<netns>/<name> in place.

    In place, not by rename: running processes see the file through a bind mount of its inode,
    and a renamed-over file would leave them looking at the old one.
    """
    path = NETNS_ETC_DIR / netns / name
    with path.open("r+" if path.exists() else "w") as out:
        out.write(content)
        out.truncate()


# --- the launcher that runs inside the pod's namespaces -------------------------------------


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path at a path inside the pod."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launcher needs to turn itself into the container's process."""

    argv: list[str]
    env: dict[str, str]
    hostname: str
    root: str  # an empty host directory for the private root, used only when one is needed
    working_dir: str | None = None
    mounts: list[Mount] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))
        path.chmod(0o600)  # it holds the pod's env, which may carry secrets

    @classmethod
    def read(cls, path: Path) -> LaunchPlan:
        raw = json.loads(path.read_text())
        raw["mounts"] = [Mount(**m) for m in raw.get("mounts", [])]
        return cls(**raw)


def launcher_argv(netns: str, plan_path: Path, python: str = sys.executable) -> list[str]:
    """The command that runs a plan inside a pod's network namespace.

    This file runs as a script in isolated mode (``-I``): it needs only the standard library,
    and the pod's environment must not change which modules the launcher imports.
    """
    return [
        "ip",
        "netns",
        "exec",
        netns,
        python,
        "-I",
        str(Path(__file__).resolve()),
        "launch",
        str(plan_path),
    ]


def dirs_to_mirror(
    paths: Iterable[str], exists: Callable[[str], bool] = os.path.lexists
) -> set[str]:
    """Host directories the private root must copy entry by entry instead of bind-mounting.

    For each path that does not exist on the host: its nearest existing ancestor and all the
    ancestors of that, up to ``/``. Those are the directories in which the launcher creates
    something the host must not see. An empty result means no private root is needed.
    """
    mirrored: set[str] = set()
    for path in paths:
        if exists(path):
            continue
        ancestor = os.path.dirname(path)
        while ancestor != "/" and not exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        while ancestor != "/":
            mirrored.add(ancestor)
            ancestor = os.path.dirname(ancestor)
        mirrored.add("/")
    return mirrored


_MS_RDONLY = 0x1
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_UNBINDABLE = 0x20000
_MS_PRIVATE = 0x40000
_CLONE_NEWNS = 0x20000
_CLONE_NEWUTS = 0x4000000
_HOSTNAME_MAX = 63


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(
    libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int
) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    _check(
        libc.mount(enc(source), enc(target), enc(fstype), flags, None),
        f"mount {source or fstype} on {target}",
    )


def _mirror(libc: ctypes.CDLL, host_dir: str, into: str, mirrored: set[str]) -> None:
    """Fill into with one bind mount per entry of host_dir (recursing into mirrored dirs)."""
    for entry in os.scandir(host_dir):
        source = os.path.join(host_dir, entry.name)
        target = os.path.join(into, entry.name)
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(source), target)
            elif source in mirrored:
                info = entry.stat()
                os.mkdir(target)
                os.chmod(target, stat.S_IMODE(info.st_mode))
                os.chown(target, info.st_uid, info.st_gid)
                _mirror(libc, source, target, mirrored)
            elif entry.is_dir():
                os.mkdir(target)
                _mount(libc, source, target, None, _MS_BIND | _MS_REC)
            else:
                Path(target).touch()
                _mount(libc, source, target, None, _MS_BIND)
        except FileNotFoundError:
            continue  # the entry went away while we looked (a temp file, say)


def _make_mount_point(path: str, source_is_dir: bool) -> None:
    if source_is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            Path(path).touch()


def _pod_hostname(hostname: str) -> str:
    return hostname[:_HOSTNAME_MAX].rstrip("-.") or "pod"


def launch(plan: LaunchPlan) -> NoReturn:
    """Become the container: private mounts, hostname, volumes, working dir, then exec."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWUTS), "unshare mount+UTS namespaces")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    hostname = _pod_hostname(plan.hostname).encode()
    _check(libc.sethostname(hostname, len(hostname)), "sethostname")

    # Resolve symlinks on the host first (/var/run -> /run): inside the mirror the same path
    # would be followed out of the private root onto the host.
    mounts = [
        Mount(m.source, os.path.realpath(m.target), m.read_only)
        for m in sorted(plan.mounts, key=lambda m: m.target.rstrip("/").count("/"))
    ]
    working_dir = os.path.realpath(plan.working_dir) if plan.working_dir else None
    wanted = [m.target for m in mounts] + ([working_dir] if working_dir else [])
    mirrored = dirs_to_mirror(wanted)
    prefix = ""
    if mirrored:
        _mount(libc, "tmpfs", plan.root, "tmpfs", 0)
        os.chmod(plan.root, 0o755)
        # Unbindable: the recursive binds of the host tree below must not pull this root in.
        _mount(libc, None, plan.root, None, _MS_UNBINDABLE)
        _mirror(libc, "/", plan.root, mirrored)
        prefix = plan.root

    for m in mounts:
        target = prefix + m.target
        _make_mount_point(target, os.path.isdir(m.source))
        _mount(libc, m.source, target, None, _MS_BIND | _MS_REC)
        if m.read_only:
            _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    if working_dir:
        os.makedirs(prefix + working_dir, exist_ok=True)
    if prefix:
        os.chroot(prefix)
    os.chdir(working_dir or "/")
    os.execvpe(plan.argv[0], plan.argv, plan.env)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "launch":
        print(f"usage: python -I {__file__} launch PLAN.json", file=sys.stderr)
        return 2
    plan = LaunchPlan.read(Path(argv[1]))
    try:
        launch(plan)
    except OSError as exc:
        # Goes to the container's log, where the pod's owner looks first.
        cause = "not found" if exc.errno == errno.ENOENT else exc.strerror
        print(f"process node: cannot start {plan.argv!r}: {cause} ({exc})", file=sys.stderr)
        return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
