"""The SLURM pre-flight check on captured `scontrol` output: parsing, every problem it names, the CLI.

ONE_NODE_* were captured from the one-node test cluster (SLURM 22.05.8, tests/workflow/slurm_cluster.py);
GPU_* is a three-node cluster written in the same format (a CPU partition, a GPU partition with typed GPUs,
accounting with enforced associations). The real cluster is checked in tests/workflow/test_slurm.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from relaxbench.cli import main
from relaxbench.cluster import (
    Cluster,
    JobRequest,
    Node,
    Partition,
    PluginSettings,
    check,
    gpu_gres,
    parse_records,
    preflight,
    slurm_minutes,
)
from relaxbench.config import load_config
from relaxbench.job_requests import job_requests, load_profiles, plugin_settings
from tests.conftest import REPO

ONE_NODE_NODES = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=2  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=1.57 "
    "AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=127.0.0.1 NodeHostName=vm "
    "Version=22.05.8 OS=Linux 6.18.44-fc-v1045 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=24105 AllocMem=0 "
    "FreeMem=18445 Sockets=1 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
    "Partitions=debug  BootTime=2026-12-02T08:07:28 SlurmdStartTime=2026-12-02T08:24:32 "
    "LastBusyTime=2026-12-02T08:24:32 CfgTRES=cpu=2,mem=24105M,billing=2 AllocTRES= CapWatts=n/a "
    "CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s\n"
)
ONE_NODE_PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=02:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 "
    "TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=24105M,node=1,billing=2\n"
)
ONE_NODE_CONFIG = {
    "AccountingStorageEnforce": "none",
    "AccountingStorageType": "accounting_storage/none",
    "MinJobAge": "300 sec",
}
NO_ACCOUNTING = "Slurm accounting storage is disabled"
ACCOUNT_WARNING = (
    "warning: account: none given, none needed (AccountingStorageEnforce = none); the plugin's warning 'not able "
    "to get a SLURM account via sacct' is harmless"
)

GPU_NODES = "\n".join(
    [
        "NodeName=c01 CPUTot=64 CPUEfctv=62 RealMemory=256000 MemSpecLimit=4000 Gres=(null) State=MIXED "
        "Partitions=cpu",
        "NodeName=g01 CPUTot=32 CPUEfctv=32 RealMemory=512000 Gres=gpu:a100:4(S:0-1) State=IDLE Partitions=gpu",
        "NodeName=g02 CPUTot=8 CPUEfctv=8 RealMemory=128000 Gres=gpu:v100:2,gpu:a100:1 State=DOWN* "
        "Partitions=gpu,debug",
    ]
)
GPU_PARTITIONS = "\n".join(
    [
        "PartitionName=cpu AllowAccounts=ALL Default=YES MaxTime=2-00:00:00 MaxCPUsPerNode=UNLIMITED "
        "MaxMemPerNode=UNLIMITED State=UP",
        "PartitionName=gpu AllowAccounts=lab,ml Default=NO MaxTime=1-00:00:00 MaxCPUsPerNode=16 "
        "MaxMemPerNode=200000 State=UP",
        "PartitionName=debug AllowAccounts=ALL Default=NO MaxTime=30:00 State=UP",
    ]
)
GPU_CONFIG = {
    "AccountingStorageEnforce": "associations,limits,qos",
    "AccountingStorageType": "accounting_storage/slurmdbd",
    "MinJobAge": "300 sec",
}


def cluster(nodes: str, partitions: str, config: dict, **fields) -> Cluster:
    return Cluster(
        nodes=tuple(Node.from_record(r) for r in parse_records(nodes)),
        partitions=tuple(Partition.from_record(r) for r in parse_records(partitions)),
        config=config,
        **fields,
    )


ONE_NODE = cluster(ONE_NODE_NODES, ONE_NODE_PARTITIONS, ONE_NODE_CONFIG, sacct_error=NO_ACCOUNTING)
GPU = cluster(GPU_NODES, GPU_PARTITIONS, GPU_CONFIG, accounts=("lab", "ml"))
SQUEUE = PluginSettings(status_command="squeue", init_seconds=2)


def lines(problems) -> list[str]:
    return [str(problem) for problem in problems]


def requests_problems(requests, cluster) -> list[str]:
    """The lines about the requests themselves (not the status command, not the account)."""
    return [
        line
        for line in lines(check(requests, cluster, SQUEUE))
        if line.split(": ")[1] not in ("status", "account")
    ]


def test_parse_records_keeps_values_with_spaces_and_equals_signs():
    (rec,) = parse_records(ONE_NODE_NODES)
    assert rec["OS"] == "Linux 6.18.44-fc-v1045 #1 SMP PREEMPT_DYNAMIC @0"
    assert rec["CfgTRES"] == "cpu=2,mem=24105M,billing=2"
    assert rec["AllocTRES"] == "" and rec["RealMemory"] == "24105" and rec["Partitions"] == "debug"


def test_nodes_and_partitions_from_scontrol():
    (node,) = ONE_NODE.nodes
    assert (node.name, node.cpus, node.memory_mb, node.gpus, node.partitions) == (
        "vm",
        2,
        24105,
        {},
        ("debug",),
    )
    assert node.usable
    (part,) = ONE_NODE.partitions
    assert (part.name, part.default, part.max_minutes, part.max_cpus_per_node) == ("debug", True, 120, None)
    assert ONE_NODE.partition(None) is part and ONE_NODE.min_job_age == 300
    c01, g01, g02 = GPU.nodes
    assert (c01.cpus, c01.memory_mb) == (62, 252000)  # CPUEfctv, RealMemory less MemSpecLimit
    assert g01.gpus == {"a100": 4} and g02.gpus == {"v100": 2, "a100": 1} and not g02.usable
    assert GPU.partition("gpu").allow_accounts == ("lab", "ml") and GPU.partition("debug").max_minutes == 30


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("02:00:00", 120),
        ("1-00:00:00", 1440),
        ("30:00", 30),
        ("45", 45),
        ("00:00:30", 1),
        ("UNLIMITED", None),
    ],
)
def test_slurm_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:a100:4(S:0-1)", {"a100": 4}),
        ("gpu:2", {None: 2}),
        ("gpu", {None: 1}),
        ("gpu:a100:2,gpu:v100:2", {"a100": 2, "v100": 2}),
        ("(null)", {}),
        ("mps:100", {}),
    ],
)
def test_gpu_gres(gres, gpus):
    assert gpu_gres(gres) == gpus


def test_the_four_problems_of_issue_20_are_named_on_the_one_node_cluster():
    """The project's SLURM profile as it ships (4 CPUs, a GPU, 32 GB, 24 h per training job, sacct, no
    account) against the captured one-node cluster: every limit it breaks, each on one line."""
    cfg = load_config(REPO / "configs/smoke.yaml")
    profile = load_profiles([REPO / "workflow/profiles/slurm"])
    found = lines(check(job_requests(profile, cfg), ONE_NODE, plugin_settings(profile)))
    assert found == [
        "error: train: asks 1440 minutes; partition 'debug' allows at most 120 (runtime)",
        "error: train: asks 4 CPUs per task; the nodes of partition 'debug' have at most 2 (set-threads: train: 2 "
        "or fewer)",
        "error: train: asks 32000 MB of memory; the nodes of partition 'debug' have at most 24105 MB (mem_mb)",
        "error: train: asks 1 GPU; the nodes of partition 'debug' have none (gpu / gres: gpu:N, gpu_model, or a "
        "partition with GPUs)",
        f"error: status: sacct sees no jobs here ({NO_ACCOUNTING}), so Snakemake would wait forever for finished "
        "jobs (slurm-status-command: squeue)",
        ACCOUNT_WARNING,
    ]


def test_the_one_node_site_file_fits_the_one_node_cluster():
    cfg = load_config(REPO / "configs/smoke.yaml")
    profile = load_profiles([REPO / "workflow/profiles/slurm", REPO / "workflow/profiles/slurm/onenode.yaml"])
    requests = job_requests(profile, cfg)
    assert [(r.rule, r.cpus, r.mem_mb, r.minutes, r.gpus, r.partition) for r in requests] == [
        ("data", 1, 4000, 30, 0, "debug"),
        ("train", 1, 4000, 60, 0, "debug"),
    ]
    out, ok = preflight(requests, plugin_settings(profile), ONE_NODE)
    assert ok and out == [
        ACCOUNT_WARNING,
        "fits: data: 1 CPU, 4000 MB, 30 min, 0 GPUs, partition debug",
        "fits: train: 1 CPU, 4000 MB, 60 min, 0 GPUs, partition debug",
    ]


def test_a_config_with_device_cuda_asks_the_one_node_cluster_for_a_gpu():
    cfg = dict(load_config(REPO / "configs/smoke.yaml"), device="cuda")
    profile = load_profiles([REPO / "workflow/profiles/slurm", REPO / "workflow/profiles/slurm/onenode.yaml"])
    found = lines(check(job_requests(profile, cfg), ONE_NODE, plugin_settings(profile)))
    assert found == [
        "error: train: asks 1 GPU; the nodes of partition 'debug' have none (gpu / gres: gpu:N, gpu_model, or a "
        "partition with GPUs)",
        ACCOUNT_WARNING,
    ]


def test_partition_problems():
    bad = JobRequest("train", cpus=1, partition="gpu")
    assert requests_problems([bad], ONE_NODE) == [
        "error: train: partition 'gpu' does not exist; partitions: debug (slurm_partition)"
    ]
    no_default = dataclasses.replace(GPU, partitions=tuple(p for p in GPU.partitions if not p.default))
    assert requests_problems([JobRequest("data", cpus=1)], no_default) == [
        "error: data: no partition given and the cluster has no default one; partitions: gpu, debug (slurm_partition)"
    ]


def test_gpu_requests_by_count_type_and_gres():
    fits = JobRequest.from_resources(
        "train", 4, {"gres": "gpu:a100:2", "slurm_partition": "gpu", "mem_mb": 64000}
    )
    assert (fits.gpus, fits.gpu_model) == (2, "a100")
    assert requests_problems([fits], GPU) == []
    wrong_type = JobRequest.from_resources(
        "train", 4, {"gpu": 1, "gpu_model": "h100", "slurm_partition": "gpu"}
    )
    assert requests_problems([wrong_type], GPU) == [
        "error: train: asks 1 h100 GPU; the nodes of partition 'gpu' have none (gpu / gres: gpu:N, gpu_model, or a "
        "partition with GPUs)"
    ]
    too_many = JobRequest.from_resources("train", 4, {"gpu": 5, "slurm_partition": "gpu"})
    assert "asks 5 GPUs; the nodes of partition 'gpu' have at most 4" in requests_problems([too_many], GPU)[0]


def test_partition_caps_and_nodes_that_fit_only_one_limit_each():
    """MaxCPUsPerNode / MaxMemPerNode cap the nodes; g01 has the GPUs, g02 not enough CPUs for 12 with 3."""
    capped = JobRequest("train", cpus=20, mem_mb=250000, gpus=1, partition="gpu")
    assert requests_problems([capped], GPU) == [
        "error: train: asks 20 CPUs per task; the nodes of partition 'gpu' have at most 16 (set-threads: train: 16 "
        "or fewer)",
        "error: train: asks 250000 MB of memory; the nodes of partition 'gpu' have at most 200000 MB (mem_mb)",
    ]
    apart = JobRequest("train", cpus=10, gpus=3, gpu_model=None, partition="gpu")
    assert requests_problems([apart], GPU) == []  # g01: 16 CPUs (capped), 4 GPUs
    split = JobRequest("train", cpus=8, gpus=2, gpu_model="v100", partition="gpu")
    assert requests_problems([split], GPU) == []  # g02: 8 CPUs, 2 v100 (down, but not forever)
    mixed = JobRequest("train", cpus=12, gpus=3, gpu_model="v100", partition="gpu")
    assert requests_problems([mixed], GPU) == [
        "error: train: asks 3 v100 GPUs; the nodes of partition 'gpu' have at most 2 (gpu / gres: gpu:N, "
        "gpu_model, or a partition with GPUs)"
    ]
    joint = JobRequest("train", cpus=12, gpus=2, gpu_model="v100", partition="gpu")
    # 12 CPUs exist on g01 only, 2 v100 on g02 only
    assert requests_problems([joint], GPU) == [
        "error: train: no single node of partition 'gpu' has 12 CPUs, 2 v100 GPUs at once"
    ]


def test_down_nodes_and_time_limits():
    debug = JobRequest("data", cpus=1, minutes=60, partition="debug")
    assert requests_problems([debug], GPU) == [
        "error: data: asks 60 minutes; partition 'debug' allows at most 30 (runtime)",
        "warning: data: no node of partition 'debug' is usable now (DOWN*); jobs wait",
    ]


def test_status_command_and_the_plugins_fallback_to_sacct():
    assert lines(check([], ONE_NODE, SQUEUE)) == []
    quick_expiry = dataclasses.replace(ONE_NODE, config=dict(ONE_NODE_CONFIG, MinJobAge="60 sec"))
    assert lines(check([], quick_expiry, dataclasses.replace(SQUEUE, init_seconds=40))) == [
        "error: status: MinJobAge is 60 s, below 3 x slurm-init-seconds-before-status-checks = 120 s, so the plugin "
        f"queries sacct instead of squeue, and sacct sees no jobs here ({NO_ACCOUNTING}) "
        "(slurm-init-seconds-before-status-checks: 20 or less)"
    ]
    no_sacct = dataclasses.replace(quick_expiry, sacct_installed=False)
    assert lines(check([], no_sacct, PluginSettings())) == []  # the plugin's default: squeue
    assert lines(check([], GPU, PluginSettings(status_command="sacct"))) == []


def test_accounts():
    job = JobRequest("train", cpus=1, partition="gpu", account="physics")
    assert lines(check([job], GPU, PluginSettings(status_command="sacct"))) == [
        "error: train: account 'physics' may not use partition 'gpu'; allowed: lab, ml",
        "error: account: 'physics' is not one of yours: lab, ml (slurm_account)",
    ]
    assert lines(check([JobRequest("train", cpus=1)], GPU, PluginSettings(status_command="sacct"))) == [
        "warning: account: none given and this cluster requires one (AccountingStorageEnforce includes "
        "associations): jobs run under your default account (default-resources: slurm_account: <account> to choose)"
    ]
    assert lines(check([JobRequest("train", cpus=1)], ONE_NODE, SQUEUE)) == [ACCOUNT_WARNING]
    unverifiable = dataclasses.replace(ONE_NODE, accounts_error="sacctmgr: no slurmdbd; sshare: no slurmdbd")
    given = JobRequest("data", cpus=1, account="lab")
    assert lines(check([given], unverifiable, SQUEUE)) == [
        "error: account: the plugin cannot check 'lab' here (sacctmgr: no slurmdbd; sshare: no slurmdbd) and stops"
    ]


def test_requests_follow_snakemakes_precedence_and_units(tmp_path):
    """set-threads over the rule's threads; set-resources over the rule's over default-resources; sizes and
    times in Snakemake's units; cpus_per_task over threads; mem_mb_per_cpu times CPUs."""
    site = tmp_path / "site.yaml"
    site.write_text(
        "default-resources: {slurm_partition: cpu, slurm_account: lab, mem_mb: 1, runtime: 5}\n"
        "set-threads: {train: 3}\n"
        "set-resources:\n  data: {mem: 2G, runtime: 2h, cpus_per_task: 2}\n  train: {mem_mb_per_cpu: 1000}\n"
    )
    profile = load_profiles([REPO / "workflow/profiles/slurm", site])
    data, train = job_requests(profile, load_config(REPO / "configs/smoke.yaml"))
    assert (data.cpus, data.mem_mb, data.minutes, data.partition, data.account) == (
        2,
        2000,
        120,
        "cpu",
        "lab",
    )
    assert (train.cpus, train.mem_mb, train.minutes, train.gpus) == (3, 3000, 120, 0)
    assert plugin_settings(profile) == PluginSettings(status_command=None, init_seconds=40)


def test_cluster_check_cli_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    smoke = str(REPO / "configs/smoke.yaml")
    assert (
        main(["cluster-check", "--profile", str(REPO / "workflow/profiles/default"), "--config", smoke]) == 2
    )
    assert capsys.readouterr().err.strip() == (
        "relaxbench: error: the profiles set executor: None; the check is for executor: slurm"
    )
    assert main(["cluster-check", "--profile", str(tmp_path / "nowhere"), "--config", smoke]) == 2
    assert (
        capsys.readouterr().err.strip() == f"relaxbench: error: profile {tmp_path / 'nowhere'} does not exist"
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    assert main(["cluster-check", "--profile", str(REPO / "workflow/profiles/slurm"), "--config", smoke]) == 2
    assert capsys.readouterr().err.strip() == (
        "relaxbench: error: scontrol show node failed: scontrol: command not found"
    )
