"""Start one container process inside the local cluster's namespaces, as a container runtime would.

The pod runner executes this file as a separate root process (`python -I -S launcher.py SPEC`)
instead of calling these system calls itself: changing mount namespace and root directory needs
a single-threaded process, and the test process runs many threads. Only the standard library is
used, and everything is imported before the root directory changes.

Modes (the `mode` key of the JSON spec):
- `run`: join the cluster's network namespace, create new mount, PID, UTS and IPC namespaces,
  build the container's root (an overlay whose lower layer is the host `/` and whose upper layer
  is a private tmpfs), bind the volumes, pivot into it, drop privileges and exec the command as
  PID 1. The launcher stays as the parent, reports the container's host PID, and exits with the
  container's status (128 + signal when killed). If the test process dies it kills the container.
- `exec`: join every namespace of a running container and run a command there with the
  container's user, groups, capabilities and environment (exec probes, preStop hooks, pod.exec).
- `client`: join the network namespace with the cluster's `/etc/hosts` and run a command as root
  (test clients that reach Services by name).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
OLD_ROOT = "/.podrunner-oldroot"
# Directories a container image has empty and writable (subject to readOnlyRootFilesystem):
# hidden from the host's copies so pods neither see nor fill the host's /tmp or /run.
OPAQUE_DIRS = {"tmp": 0o1777, "var/tmp": 0o1777, "run": 0o755}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
WATCHDOG_SECONDS = 0.25

libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(Exception):
    """A step of building the container failed; the message names the step."""


def check(result: int, what: str) -> None:
    """Raise LaunchError with errno text when a libc call failed."""
    if result != 0:
        err = ctypes.get_errno()
        msg = f"{what}: {os.strerror(err)}"
        raise LaunchError(msg)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """Mount a filesystem or bind (the mount system call)."""
    check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def setns(path: str, nstype: int) -> None:
    """Join the namespace behind an nsfs path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def prctl(option: int, arg: int) -> None:
    """Set a process attribute (the prctl system call with one argument)."""
    check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def make_file(path: str) -> None:
    """Create an empty file to bind a file onto."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def build_root_layers(scratch: str) -> str:
    """Mount a private tmpfs with the overlay's upper layer and return the merged root path."""
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    upper, work, merged = (os.path.join(scratch, d) for d in ("upper", "work", "root"))
    for path in (upper, work, merged):
        os.mkdir(path)
    for relative, mode in OPAQUE_DIRS.items():
        path = os.path.join(upper, relative)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        os.setxattr(path, "trusted.overlay.opaque", b"y")
    mount("overlay", merged, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    return merged


def pivot_into(new_root: str) -> None:
    """Make new_root the root of this mount namespace, keeping the old root at OLD_ROOT."""
    os.mkdir(new_root + OLD_ROOT, 0o700)
    os.chdir(new_root)
    check(libc.syscall(SYS_PIVOT_ROOT, b".", OLD_ROOT[1:].encode()), "pivot_root")
    os.chdir("/")


def mount_system_dirs() -> None:
    """Give the container its own /proc, a minimal /dev and a read-only /sys."""
    os.makedirs("/proc", exist_ok=True)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=0755")
    for device in DEVICES:
        make_file(f"/dev/{device}")
        mount(f"{OLD_ROOT}/dev/{device}", f"/dev/{device}", None, MS_BIND)
    for directory, fstype, data in (
        ("pts", "devpts", "newinstance,ptmxmode=0666"),
        ("shm", "tmpfs", "mode=1777"),
        ("mqueue", "mqueue", ""),
    ):
        os.mkdir(f"/dev/{directory}")
        mount(fstype, f"/dev/{directory}", fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC, data)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, f"/dev/{name}")
    mount(f"{OLD_ROOT}/sys", "/sys", None, MS_BIND | MS_REC)
    mount(None, "/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def bind_volumes(mounts: list[dict]) -> None:
    """Bind host paths at their container paths, parents before children, as runtimes do."""
    for spec in sorted(mounts, key=lambda m: m["target"].rstrip("/").count("/")):
        source, target = OLD_ROOT + spec["source"], spec["target"]
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            make_file(target)
        mount(source, target, None, MS_BIND | MS_REC)
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
        mount(None, target, None, flags | (MS_RDONLY if spec["read_only"] else 0))


def restrict_capabilities(keep: list[int]) -> None:
    """Drop every capability not in keep from the bounding set (root keeps only those on exec)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def become_user(spec: dict) -> None:
    """Switch to the container's user, groups and privilege rules; last step before exec."""
    restrict_capabilities(spec["capabilities"])
    os.setgroups(spec["groups"])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    # Set after the uid change: changing credentials clears the parent-death signal.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if spec["no_new_privs"]:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.umask(0o022)


def enter_working_dir(cwd: str) -> None:
    """Change to the working directory, creating it like container runtimes do."""
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)


def exec_command(spec: dict, status_fd: int) -> None:
    """Replace this process with the container command; report a failure on status_fd."""
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])  # noqa: S606 - the pod's argv
    except OSError as exc:
        os.write(status_fd, f"exec {spec['argv'][0]!r}: {exc.strerror}".encode())
        os._exit(128)


def container_main(spec: dict, status_fd: int) -> None:
    """Build the container around this process (PID 1 of a new PID namespace) and exec."""
    try:
        merged = build_root_layers(spec["scratch"])
        pivot_into(merged)
        mount_system_dirs()
        bind_volumes(spec["mounts"])
        check(libc.umount2(OLD_ROOT.encode(), MNT_DETACH), "umount old root")
        os.rmdir(OLD_ROOT)
        hostname = spec["hostname"].encode()
        check(libc.sethostname(hostname, len(hostname)), "sethostname")
        enter_working_dir(spec["cwd"])
        if spec["read_only_root"]:
            mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        become_user(spec)
    except (OSError, LaunchError) as exc:
        os.write(status_fd, f"container setup failed: {exc}".encode())
        os._exit(128)
    exec_command(spec, status_fd)


def supervise(child: int, parent: int) -> int:
    """Wait for child; kill it if the test process (our parent) disappears. Return exit status."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)
        if os.getppid() != parent:
            os.kill(child, signal.SIGKILL)
        signal.sigtimedwait({signal.SIGCHLD}, WATCHDOG_SECONDS)


def fork_and_supervise(spec: dict, child_main: Callable[[dict, int], None]) -> None:
    """Fork; the child runs child_main, this process reports the child's PID and waits."""
    parent = os.getppid()
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    child = os.fork()
    if child == 0:
        if "pid_fd" in spec:
            os.close(spec["pid_fd"])
        child_main(spec, status_fd)
        os._exit(128)
    os.close(status_fd)
    if "pid_fd" in spec:
        os.write(spec["pid_fd"], str(child).encode())
        os.close(spec["pid_fd"])
    sys.exit(supervise(child, parent))


def run_container(spec: dict) -> None:
    """Mode `run`: start a new container process."""
    setns(spec["netns"], CLONE_NEWNET)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    fork_and_supervise(spec, container_main)


def exec_in_container(spec: dict) -> None:
    """Mode `exec`: run a command inside a running container's namespaces."""
    target = spec["target_pid"]
    order = (
        ("net", CLONE_NEWNET),
        ("uts", CLONE_NEWUTS),
        ("ipc", CLONE_NEWIPC),
        ("pid", CLONE_NEWPID),
        ("mnt", CLONE_NEWNS),
    )
    fds = [
        (os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), kind)
        for name, kind in order
    ]
    for fd, kind in fds:
        check(libc.setns(fd, kind), f"setns into container process {target}")
        os.close(fd)

    def exec_main(spec: dict, status_fd: int) -> None:
        try:
            enter_working_dir(spec["cwd"])
            become_user(spec)
        except (OSError, LaunchError) as exc:
            os.write(status_fd, f"exec setup failed: {exc}".encode())
            os._exit(128)
        exec_command(spec, status_fd)

    fork_and_supervise(spec, exec_main)


def run_client(spec: dict) -> None:
    """Mode `client`: run a test client in the cluster network with the cluster's /etc/hosts."""
    setns(spec["netns"], CLONE_NEWNET)
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for source, target in spec["files"].items():
        mount(source, target, None, MS_BIND)
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])  # noqa: S606 - the test's argv


def main() -> None:
    """Read the spec file named on the command line and run the requested mode."""
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    modes = {"run": run_container, "exec": exec_in_container, "client": run_client}
    try:
        modes[spec["mode"]](spec)
    except (OSError, LaunchError) as exc:
        print(f"pod runner launcher ({spec['mode']}): {exc}", file=sys.stderr)
        sys.exit(125)


if __name__ == "__main__":
    main()
