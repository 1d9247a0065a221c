"""relaxbench: the grid task x model x method x seed -> run records -> leaderboard -> HTML report.

    snakemake --cores 4 --workflow-profile workflow/profiles/default          # configs/default.yaml
    snakemake --cores 2 --configfile configs/smoke.yaml                      # every method once, tiny
    snakemake --profile workflow/profiles/slurm --configfile configs/paper.yaml   # GPU cluster

Results go to results/<name>/ and reports/<name>/ (relative to the working directory), <name> being the
config's `name`. The jobs call the `relaxbench` command line with the same config file; see
workflow/rules/common.smk for why that file is the only source of settings (no `--config KEY=VALUE`).
"""

from snakemake.utils import min_version, validate

min_version("8.0")


include: "workflow/rules/common.smk"


if not workflow.overwrite_configfiles:

    configfile: DEFAULT_CONFIG


CONFIG_FILE = config_file()
validate(config, "workflow/schemas/config.schema.yaml")
CFG = checked_config(CONFIG_FILE)
NAME = CFG["name"]
RUNS = expand_runs(CFG)
RUN_BY_FOLDER = {(run.task, run.folder, run.method, run.seed): run for run in RUNS}


report: "workflow/report/workflow.rst"


wildcard_constraints:
    name=re.escape(NAME),
    task=one_of(sorted({run.task for run in RUNS})),
    model=one_of(sorted({run.folder for run in RUNS})),
    method=one_of(sorted({run.method for run in RUNS})),
    seed=r"\d+",
    key=r"[0-9a-f]{16}",


include: "workflow/rules/cluster.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    runs,
    collect,
    report,


rule all:
    """The HTML report of the config (and everything it needs).

    The tables and every run's record are listed too: Snakemake does not recreate a missing file that only
    feeds an up-to-date output, so a deleted run folder would otherwise not be rerun.
    """
    default_target: True
    input:
        report=str(layout.report_dir(NAME)),
        report_done=str(layout.results_dir(NAME) / layout.REPORT_DONE),
        tables=[str(layout.results_dir(NAME) / t) for t in (layout.LEADERBOARD_CSV, layout.AGGREGATES_CSV)],
        records=run_files("record.json"),
