"""On a SLURM cluster: the pre-flight check of every job's request, once, before the first submission.

The submitted rules take their threads and resources from `relaxbench.job_requests.rule_requests`
(`RULE_REQUESTS`), which `relaxbench cluster-check` reads too. When the executor is `slurm`, the `onstart`
hook (run on the login node after the DAG is built, before any job is submitted; not in dry runs) checks
the requests of the jobs about to be submitted, as Snakemake evaluated them (profiles, site file and
command line included), against `scontrol`'s nodes and partitions and the plugin's status and account
settings (`relaxbench.cluster`): one line per problem, and the workflow stops when a job could never
start or finish, instead of leaving it pending silently. It is an `onstart` hook rather than a rule
because a rule that every job depends on would be rerun on every invocation and make Snakemake rerun
finished runs after it.
"""

from relaxbench.cluster import ClusterError, PluginSettings, preflight
from relaxbench.job_requests import from_jobs, rule_requests

RULE_REQUESTS = rule_requests(CFG)


def slurm_preflight():
    """Check the jobs to be submitted to SLURM; raise a WorkflowError when one could never start."""
    if workflow.executor_plugin is None or workflow.executor_plugin.name != "slurm":
        return
    settings = workflow.executor_settings
    jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    if not jobs:
        return
    try:
        lines, ok = preflight(
            from_jobs(jobs),
            PluginSettings(
                status_command=settings.status_command,
                init_seconds=settings.init_seconds_before_status_checks,
            ),
        )
    except ClusterError as err:
        raise WorkflowError(f"relaxbench cluster-check: {err}; nothing was submitted") from None
    print("\n".join(f"relaxbench cluster-check: {line}" for line in lines), file=sys.stderr)
    if not ok:
        raise WorkflowError(
            "relaxbench cluster-check: some jobs could never start or finish on this cluster (lines above); "
            "fix the profile or site file (docs/WORKFLOW.md, 'On a SLURM cluster'); nothing was submitted"
        )


onstart:
    slurm_preflight()
