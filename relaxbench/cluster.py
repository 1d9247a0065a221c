"""Pre-flight check of a SLURM cluster: which job requests no node can satisfy, before anything is submitted.

A job SLURM can never start does not fail: it pends forever (reason `PartitionConfig`, `ReqNodeNotAvail`,
...) and Snakemake prints nothing about it. This module reads what the cluster offers (`scontrol show node`,
`scontrol show partition`, `scontrol show config`, and whether `sacct` and `sacctmgr` answer) and compares
it with what each rule's jobs ask for (`JobRequest`: CPUs per task, memory in MB, GPUs, time limit in
minutes, partition, account) and with the executor plugin's settings (`PluginSettings`: status command,
account handling, first status check). `check` returns one `Problem` per finding; a fatal one means a job
(or the workflow) could never finish.

The checks follow what snakemake-executor-plugin-slurm 2.6 does: jobs go to the requested partition or the
cluster's default one; `--cpus-per-task` is the job's threads unless `cpus_per_task` / `cpus_per_gpu` is set;
`gpu: N` becomes `--gpus=N` and `gres: gpu[:type]:N` becomes `--gres`; the plugin polls job states with
`sacct` (or `squeue`, which it abandons for `sacct` when MinJobAge is below three times the first status
check interval and `sacct` is installed); it checks a given account with `sacctmgr` / `sshare`.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from relaxbench.errors import UserError

__all__ = [
    "Cluster",
    "ClusterError",
    "JobRequest",
    "Node",
    "Partition",
    "PluginSettings",
    "Problem",
    "check",
    "describe",
    "parse_records",
    "preflight",
    "probe",
    "slurm_minutes",
]

UNLIMITED = {"UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", ""}
UNUSABLE_NODE_STATES = ("DOWN", "DRAIN", "FAIL", "FUTURE", "INVAL", "NOT_RESPONDING", "POWERED_DOWN")

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.]*)=")
_GRES = re.compile(r"^gpu(?::([^:(]+))?(?::(\d+))?")


class ClusterError(UserError):
    """The cluster or a profile cannot be read (one line, for the command line)."""


def parse_records(text: str) -> list[dict[str, str]]:
    """Records of `scontrol show <entity> --oneliner` output: one dict of ``Key=Value`` per line.

    Values may contain spaces (``OS=Linux 6.1 #1 SMP``): a key is a word directly followed by ``=`` at the
    start of the line or after whitespace.
    """
    records = []
    for line in text.splitlines():
        keys = list(_KEY.finditer(line))
        if not keys:
            continue
        ends = [match.start() for match in keys[1:]] + [len(line)]
        records.append({m.group(1): line[m.end() : end].strip() for m, end in zip(keys, ends)})
    return records


def slurm_minutes(text: str) -> int | None:
    """A SLURM time limit in minutes (rounded up): ``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM``;
    None for unlimited."""
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _number(text: str | None) -> int | None:
    """An integer field; None for UNLIMITED and the like."""
    if text is None or text.upper() in UNLIMITED:
        return None
    match = re.match(r"\d+", text)
    return int(match.group()) if match else None


def gpu_gres(gres: str) -> dict[str | None, int]:
    """GPUs in a node's `Gres` (``gpu:a100:4(S:0-1),gpu:v100:2``) or a job's `gres` (``gpu:1``), by type
    (None: untyped)."""
    found: dict[str | None, int] = {}
    for item in gres.split(","):
        match = _GRES.match(item.strip())
        if match:
            kind, count = match.group(1), match.group(2)
            if count is None and kind is not None and kind.isdigit():
                kind, count = None, kind
            found[kind] = found.get(kind, 0) + int(count or 1)
    return found


@dataclass(frozen=True)
class Node:
    """One node: usable CPUs, memory in MB (RealMemory less MemSpecLimit), GPUs by type, partitions, state."""

    name: str
    cpus: int
    memory_mb: int
    gpus: dict[str | None, int]
    partitions: tuple[str, ...]
    state: str

    @classmethod
    def from_record(cls, rec: dict[str, str]) -> Node:
        return cls(
            name=rec["NodeName"],
            cpus=_number(rec.get("CPUEfctv")) or _number(rec.get("CPUTot")) or 0,
            memory_mb=(_number(rec.get("RealMemory")) or 0) - (_number(rec.get("MemSpecLimit")) or 0),
            gpus=gpu_gres(rec.get("Gres", "")),
            partitions=tuple(p for p in rec.get("Partitions", "").split(",") if p),
            state=rec.get("State", ""),
        )

    @property
    def usable(self) -> bool:
        return not any(bad in self.state.upper() for bad in UNUSABLE_NODE_STATES)

    def gpu_count(self, kind: str | None = None) -> int:
        return sum(self.gpus.values()) if kind is None else self.gpus.get(kind, 0)


@dataclass(frozen=True)
class Partition:
    """One partition: time limit in minutes (None: unlimited), per-node caps, accounts allowed."""

    name: str
    default: bool
    max_minutes: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    state: str
    allow_accounts: tuple[str, ...] | None

    @classmethod
    def from_record(cls, rec: dict[str, str]) -> Partition:
        accounts = rec.get("AllowAccounts", "ALL")
        return cls(
            name=rec["PartitionName"],
            default=rec.get("Default", "NO").upper() == "YES",
            max_minutes=slurm_minutes(rec.get("MaxTime", "UNLIMITED")),
            max_cpus_per_node=_number(rec.get("MaxCPUsPerNode")),
            max_mem_per_node_mb=_number(rec.get("MaxMemPerNode")),
            state=rec.get("State", "UP"),
            allow_accounts=None if accounts.upper() == "ALL" else tuple(accounts.split(",")),
        )


@dataclass(frozen=True)
class Cluster:
    """What the cluster offers, and how its accounting answers.

    ``sacct_error`` / ``accounts_error``: why `sacct` (job states) / `sacctmgr` and `sshare` (accounts)
    give nothing, None when they work. ``accounts``: the user's accounts where known.
    """

    nodes: tuple[Node, ...]
    partitions: tuple[Partition, ...]
    config: dict[str, str] = field(default_factory=dict)
    sacct_installed: bool = True
    sacct_error: str | None = None
    accounts: tuple[str, ...] = ()
    accounts_error: str | None = None

    @property
    def min_job_age(self) -> int | None:
        """Seconds a finished job stays visible to `squeue` (MinJobAge)."""
        return _number(self.config.get("MinJobAge"))

    @property
    def enforce(self) -> str:
        return self.config.get("AccountingStorageEnforce", "none")

    def partition(self, name: str | None) -> Partition | None:
        """The partition of that name, or the default one for None."""
        return next((p for p in self.partitions if (p.name == name if name else p.default)), None)

    def nodes_of(self, partition: Partition) -> list[Node]:
        return [node for node in self.nodes if partition.name in node.partitions]


@dataclass(frozen=True)
class JobRequest:
    """What one rule's jobs ask for: CPUs per task, memory in MB, GPUs (of ``gpu_model`` when set), time
    limit in minutes, partition and account (None: not given)."""

    rule: str
    cpus: int
    mem_mb: int | None = None
    minutes: int | None = None
    gpus: int = 0
    gpu_model: str | None = None
    partition: str | None = None
    account: str | None = None

    @classmethod
    def from_resources(cls, rule: str, threads: int, resources: dict) -> JobRequest:
        """The request the SLURM plugin makes of a job with these threads and (unit-normalised) resources."""
        gres = gpu_gres(str(resources.get("gres") or ""))
        gpus = int(resources.get("gpu") or 0) or sum(gres.values())
        model = resources.get("gpu_model") or next((kind for kind in gres if kind), None)
        cpus = threads
        if resources.get("cpus_per_task"):
            cpus = max(1, int(resources["cpus_per_task"]))
        elif gpus and resources.get("cpus_per_gpu"):
            cpus = max(1, int(resources["cpus_per_gpu"])) * gpus
        mem = resources.get("mem_mb")
        if resources.get("mem_mb_per_cpu"):
            mem = int(resources["mem_mb_per_cpu"]) * cpus
        return cls(
            rule=rule,
            cpus=cpus,
            mem_mb=int(mem) if mem else None,
            minutes=int(resources["runtime"]) if resources.get("runtime") else None,
            gpus=gpus,
            gpu_model=str(model) if model else None,
            partition=str(resources["slurm_partition"]) if resources.get("slurm_partition") else None,
            account=str(resources["slurm_account"]) if resources.get("slurm_account") else None,
        )


@dataclass(frozen=True)
class PluginSettings:
    """The SLURM executor plugin's settings that decide whether it sees jobs finish: ``--slurm-status-command``
    (None: its default) and ``--slurm-init-seconds-before-status-checks``.

    (Its ``--slurm-no-account`` is not read by plugin 2.6.1: without an account it always tries `sacct` to
    guess one, logs a warning when that fails, and submits without.)"""

    status_command: str | None = None
    init_seconds: int = 40


@dataclass(frozen=True)
class Problem:
    """One finding, one line; ``fatal``: a job (or the workflow) could never finish."""

    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{'error' if self.fatal else 'warning'}: {self.message}"


def check(requests: list[JobRequest], cluster: Cluster, settings: PluginSettings) -> list[Problem]:
    """Every problem of these requests on this cluster, one per rule and limit, then status and account."""
    problems = []
    for request in requests:
        problems += _request_problems(request, cluster)
    problems += _status_problems(cluster, settings)
    problems += _account_problems(requests, cluster)
    return problems


def _request_problems(request: JobRequest, cluster: Cluster) -> list[Problem]:
    rule = request.rule
    partition = cluster.partition(request.partition)
    names = ", ".join(p.name for p in cluster.partitions) or "none"
    if partition is None:
        if request.partition:
            return [
                Problem(
                    f"{rule}: partition '{request.partition}' does not exist; partitions: {names} (slurm_partition)"
                )
            ]
        return [
            Problem(
                f"{rule}: no partition given and the cluster has no default one; partitions: {names} (slurm_partition)"
            )
        ]
    where = f"partition '{partition.name}'"
    nodes = cluster.nodes_of(partition)
    if not nodes:
        return [Problem(f"{rule}: {where} has no nodes")]
    problems = []
    if request.minutes and partition.max_minutes is not None and request.minutes > partition.max_minutes:
        problems.append(
            Problem(
                f"{rule}: asks {request.minutes} minutes; {where} allows at most {partition.max_minutes} (runtime)"
            )
        )
    cpus = [min(n.cpus, partition.max_cpus_per_node or n.cpus) for n in nodes]
    if request.cpus > max(cpus):
        problems.append(
            Problem(
                f"{rule}: asks {request.cpus} CPUs per task; the nodes of {where} have at most {max(cpus)} "
                f"(set-threads: {rule}: {max(cpus)} or fewer)"
            )
        )
    mems = [min(n.memory_mb, partition.max_mem_per_node_mb or n.memory_mb) for n in nodes]
    if request.mem_mb and request.mem_mb > max(mems):
        problems.append(
            Problem(
                f"{rule}: asks {request.mem_mb} MB of memory; the nodes of {where} have at most {max(mems)} MB (mem_mb)"
            )
        )
    gpus = [n.gpu_count(request.gpu_model) for n in nodes]
    if request.gpus > max(gpus):
        kind = f" {request.gpu_model}" if request.gpu_model else ""
        have = f"at most {max(gpus)}" if max(gpus) else "none"
        problems.append(
            Problem(
                f"{rule}: asks {request.gpus}{kind} GPU{'s' if request.gpus > 1 else ''}; the nodes of {where} have "
                f"{have} (gpu / gres: gpu:N, gpu_model, or a partition with GPUs)"
            )
        )
    if not problems and not any(
        c >= request.cpus and (not request.mem_mb or m >= request.mem_mb) and g >= request.gpus
        for c, m, g in zip(cpus, mems, gpus)
    ):
        wanted = [f"{request.cpus} CPUs"] + [f"{request.mem_mb} MB"] * bool(request.mem_mb)
        wanted += [f"{request.gpus}{' ' + request.gpu_model if request.gpu_model else ''} GPUs"] * bool(
            request.gpus
        )
        problems.append(Problem(f"{rule}: no single node of {where} has {', '.join(wanted)} at once"))
    if (
        partition.allow_accounts is not None
        and request.account
        and request.account not in partition.allow_accounts
    ):
        problems.append(
            Problem(
                f"{rule}: account '{request.account}' may not use {where}; allowed: {', '.join(partition.allow_accounts)}"
            )
        )
    if partition.state.upper() != "UP":
        problems.append(
            Problem(f"{rule}: {where} is {partition.state}; jobs wait until it is UP", fatal=False)
        )
    elif not any(node.usable for node in nodes):
        states = ", ".join(sorted({n.state for n in nodes}))
        problems.append(
            Problem(f"{rule}: no node of {where} is usable now ({states}); jobs wait", fatal=False)
        )
    return problems


def _status_problems(cluster: Cluster, settings: PluginSettings) -> list[Problem]:
    """Will the plugin see jobs finish? Its command (given or its default) and its fallback to `sacct`."""
    command = settings.status_command or ("sacct" if cluster.sacct_installed else "squeue")
    age, threshold = cluster.min_job_age, 3 * settings.init_seconds
    if command == "squeue" and cluster.sacct_installed and (age is None or age < threshold):
        if cluster.sacct_error is None:
            return []
        return [
            Problem(
                f"status: MinJobAge is {age} s, below 3 x slurm-init-seconds-before-status-checks = {threshold} s, so "
                f"the plugin queries sacct instead of squeue, and sacct sees no jobs here ({cluster.sacct_error}) "
                f"(slurm-init-seconds-before-status-checks: {max(1, (age or 0) // 3)} or less)"
            )
        ]
    if command == "sacct" and cluster.sacct_error is not None:
        return [
            Problem(
                f"status: sacct sees no jobs here ({cluster.sacct_error}), so Snakemake would wait forever for "
                "finished jobs (slurm-status-command: squeue)"
            )
        ]
    return []


def _account_problems(requests: list[JobRequest], cluster: Cluster) -> list[Problem]:
    """Does a job need an account, and will the plugin accept the one given?"""
    if not requests:
        return []
    given = sorted({r.account for r in requests if r.account})
    problems = []
    for account in given:
        if cluster.accounts_error is not None:
            problems.append(
                Problem(
                    f"account: the plugin cannot check '{account}' here ({cluster.accounts_error}) and stops"
                )
            )
        elif cluster.accounts and account.lower() not in {a.lower() for a in cluster.accounts}:
            problems.append(
                Problem(
                    f"account: '{account}' is not one of yours: {', '.join(cluster.accounts)} (slurm_account)"
                )
            )
    if given:
        return problems
    if "associations" in cluster.enforce:
        problems.append(
            Problem(
                "account: none given and this cluster requires one (AccountingStorageEnforce includes associations): "
                "jobs run under your default account (default-resources: slurm_account: <account> to choose)",
                fatal=False,
            )
        )
    else:
        problems.append(
            Problem(
                f"account: none given, none needed (AccountingStorageEnforce = {cluster.enforce}); the plugin's "
                "warning 'not able to get a SLURM account via sacct' is harmless",
                fatal=False,
            )
        )
    return problems


def _run(cmd: list[str], timeout: float = 30) -> tuple[int, str, str]:
    """(status, stdout, stderr) of a command; 127 when it is not installed."""
    if shutil.which(cmd[0]) is None:
        return 127, "", f"{cmd[0]}: command not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(cmd)}: no answer within {timeout:g} s"
    return out.returncode, out.stdout, out.stderr


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def probe() -> Cluster:
    """Ask the cluster (`scontrol`, `sacct`, `sacctmgr`, `sshare` on the login node).

    Raises ClusterError with the command's message when `scontrol` cannot reach the controller.
    """
    records = {}
    for entity in ("node", "partition"):
        status, out, err = _run(["scontrol", "show", entity, "--oneliner"])
        if status != 0:
            raise ClusterError(f"scontrol show {entity} failed: {_first_line(err or out)}")
        records[entity] = parse_records(out)
    status, out, _ = _run(["scontrol", "show", "config"])
    config = {}
    for line in out.splitlines() if status == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    status, out, err = _run(["sacct", "--noheader", "-X", "--format=JobID", "--starttime=now"])
    sacct_error = None if status == 0 else _first_line(err or out)
    user = getpass.getuser()
    status, out, err = _run(["sacctmgr", "--noheader", "-s", "list", "user", user, "format=account%256"])
    accounts_error = None
    if status != 0 or not out.strip():
        sacctmgr = _first_line(err or out) if status != 0 else "no accounts"
        status, out, err = _run(["sshare", "-U", "--format", "Account%256", "--noheader"])
        if status != 0:
            accounts_error = f"sacctmgr: {sacctmgr}; sshare: {_first_line(err or out)}"
    return Cluster(
        nodes=tuple(Node.from_record(rec) for rec in records["node"]),
        partitions=tuple(Partition.from_record(rec) for rec in records["partition"]),
        config=config,
        sacct_installed=shutil.which("sacct") is not None,
        sacct_error=sacct_error,
        accounts=tuple(sorted({a.strip() for a in out.split() if a.strip()})),
        accounts_error=accounts_error,
    )


def describe(request: JobRequest) -> str:
    """``train: 1 CPU, 4000 MB, 30 min, 0 GPUs, partition debug`` (what the job asks for)."""
    parts = [
        f"{request.cpus} CPU{'s' if request.cpus != 1 else ''}",
        f"{request.mem_mb} MB" if request.mem_mb else "memory unset",
        f"{request.minutes} min" if request.minutes else "no time limit",
        f"{request.gpus}{' ' + request.gpu_model if request.gpu_model else ''} GPUs",
        f"partition {request.partition or '(default)'}",
    ]
    if request.account:
        parts.append(f"account {request.account}")
    return f"{request.rule}: {', '.join(parts)}"


def preflight(
    requests: list[JobRequest], settings: PluginSettings, cluster: Cluster | None = None
) -> tuple[list[str], bool]:
    """The lines to print (one per problem, then what each rule asks for when every job can start) and
    whether every job can start; probes the cluster unless one is given."""
    problems = check(requests, cluster or probe(), settings)
    fatal = any(problem.fatal for problem in problems)
    lines = [str(problem) for problem in problems]
    if not fatal:
        lines += [f"fits: {describe(request)}" for request in requests]
    return lines, not fatal
