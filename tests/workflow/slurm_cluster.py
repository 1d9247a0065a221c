"""A one-node SLURM cluster for the tests: munged, slurmctld and slurmd of Debian's `slurm-wlm` and `munge`.

Everything lives under one folder (config, munge key and socket, state, logs); the daemons run in the
foreground as children of the test, on free ports, with a marker in their environment that every process
they start inherits, so that stopping the cluster can end exactly the processes it started (jobs included)
and check that none is left. The config is written where SLURM's commands look for it,
/etc/slurm/slurm.conf (the plugin's job steps drop ``SLURM_CONF`` from their environment, so `srun` inside
a job finds the cluster only there), and removed afterwards; a config there that the test did not write is
never touched (the test skips).

The node is the machine as `slurmd -C` reports it (CPUs, memory), in one partition ``debug`` (the default,
time limit 120 minutes); no accounting database (`AccountingStorageType=accounting_storage/none`), so
`sacct` sees no jobs, as on the cluster of issue 20.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
MARKER = "RELAXBENCH_TEST_CLUSTER"
CONF = Path("/etc/slurm/slurm.conf")
HEADER = "# relaxbench one-node test cluster (tests/workflow/slurm_cluster.py); removed when the test ends"
PARTITION = "debug"
PARTITION_MINUTES = 120


def unavailable() -> str | None:
    """Why the cluster cannot be started here (None when it can)."""
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [name for name in DAEMONS + CLIENTS if not _which(name)]
    if missing:
        return (
            f"SLURM or munge is not installed (missing {', '.join(missing)}); scripts/setup.sh installs "
            "the Debian packages slurm-wlm and munge when run as root with apt-get"
        )
    if CONF.exists() and not CONF.read_text(errors="replace").startswith(HEADER):
        return f"{CONF} exists and is not the test's: this machine has a SLURM cluster of its own"
    if CONF.exists() and _alive(CONF):
        return f"another one-node test cluster is running ({CONF})"
    return None


def _alive(conf: Path) -> bool:
    """Whether the test cluster of that config still has its controller running."""
    for line in conf.read_text(errors="replace").splitlines():
        if line.startswith("SlurmctldPidFile="):
            pid_file = Path(line.split("=", 1)[1])
            return pid_file.exists() and psutil.pid_exists(int(pid_file.read_text().strip() or 0))
    return False


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_line() -> str:
    """This machine's node definition as `slurmd -C` prints it (NodeName, CPUs, sockets, RealMemory)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def slurm_conf(root: Path, node: str, ports: tuple[int, int]) -> str:
    """slurm.conf of the one-node cluster under ``root``."""
    name = node.split()[0].split("=", 1)[1]
    return "\n".join(
        [
            HEADER,
            "ClusterName=relaxbench",
            f"SlurmctldHost={name}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root}/munge/munge.socket",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log",
            f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime={PARTITION_MINUTES} State=UP",
            "",
        ]
    )


@contextmanager
def one_node_cluster(root: Path, timeout: float = 60) -> Iterator[dict[str, str]]:
    """Start the cluster under ``root`` (`unavailable()` must be None); yield the environment to run its
    clients in (with the marker); stop it and everything it started and remove its config (also when the
    body fails), raising if a process of it is left."""
    root = root.resolve()
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(slurm_conf(root, node_line(), (_free_port(), _free_port())))
    env = dict(os.environ, **{MARKER: str(root)})
    env.pop("SLURM_CONF", None)
    with ExitStack() as stack:
        stack.callback(CONF.unlink, missing_ok=True)
        stack.callback(_stop, root, env)
        logs = {name: stack.enter_context(open(root / f"{name}.out", "w")) for name in DAEMONS}
        munge_args = [f"--key-file={key}", f"--socket={root}/munge/munge.socket"]
        munge_args += [f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log"]
        munge_args += [f"--seed-file={root}/munge/munged.seed"]
        _start(["munged", "--foreground", "--force", *munge_args], env, logs["munged"])
        _wait(lambda: (root / "munge" / "munge.socket").exists(), timeout, "munged's socket", root)
        _start(["slurmctld", "-D"], env, logs["slurmctld"])
        _start(["slurmd", "-D"], env, logs["slurmd"])
        _wait(lambda: _node_state(env) == "idle", timeout, "the node to be idle", root)
        yield env


def _start(cmd: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([_which(cmd[0]), *cmd[1:]], env=env, stdout=log, stderr=subprocess.STDOUT)


def _node_state(env: dict[str, str]) -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _wait(ready, timeout: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {path.name}:\n{path.read_text(errors='replace')[-2000:]}"
                for path in sorted(root.rglob("*.log")) + sorted(root.glob("*.out"))
            )
            raise RuntimeError(f"one-node SLURM cluster: timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


def processes(root: Path) -> list[psutil.Process]:
    """The processes carrying this cluster's marker: its daemons, their job steps and the jobs."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == str(root):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop(root: Path, env: dict[str, str]) -> None:
    """Cancel the jobs, stop the daemons, end what is left of the cluster's processes; raise if any stays."""
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True, timeout=30)
    _wait_gone(lambda: not _queue(env), 20)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in processes(root):
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(processes(root), timeout=10)
    left = processes(root)
    if left:
        raise RuntimeError(f"one-node SLURM cluster: processes left after stopping it: {left}")


def _queue(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
    return out.stdout.split() if out.returncode == 0 else []


def _wait_gone(done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.5)
