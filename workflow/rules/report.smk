"""The leaderboard and the HTML report (cheap, local rules).

Both call the command line with the contract `relaxbench collect --config C --results R` (writes
`R/<name>/leaderboard.csv`, one row per run, and `R/<name>/aggregates.csv`) and
`relaxbench report --config C --results R --reports P` (writes `P/<name>/index.html` and its figures and
run pages, from the two tables and the runs' records and histories). `runs` is a target for the training
grid alone.
"""


rule runs:
    """Every run's record (data and training stages only)."""
    input:
        run_files("record.json"),


rule collect:
    """The leaderboard (one row per run) and its aggregates."""
    input:
        records=run_files("record.json"),
    output:
        leaderboard=report(
            layout.snakemake_pattern(layout.LEADERBOARD_CSV),
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
        aggregates=report(
            layout.snakemake_pattern(layout.AGGREGATES_CSV),
            caption="../report/aggregates.rst",
            category="Leaderboard",
        ),
    log:
        layout.snakemake_pattern("logs/collect.log"),
    benchmark:
        layout.snakemake_pattern("benchmarks/collect.tsv")
    conda:
        "../envs/relaxbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        config=config_path,
        results=lambda wildcards, output: parent(output.leaderboard, 2),
    shell:
        "python -m relaxbench -v collect --config {params.config:q} --results {params.results:q} > {log:q} 2>&1"


rule report:
    """relaxbench's HTML report, rendered from the leaderboard."""
    input:
        leaderboard=layout.snakemake_pattern(layout.LEADERBOARD_CSV),
        aggregates=layout.snakemake_pattern(layout.AGGREGATES_CSV),
        records=run_files("record.json"),
        histories=run_files("history.csv"),
    output:
        html=report(
            update(directory(f"{layout.REPORTS}/{{name}}")),
            htmlindex="index.html",
            caption="../report/report.rst",
            category="Report",
        ),
        done=touch(layout.snakemake_pattern(layout.REPORT_DONE)),
    log:
        layout.snakemake_pattern("logs/report.log"),
    benchmark:
        layout.snakemake_pattern("benchmarks/report.tsv")
    conda:
        "../envs/relaxbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        config=config_path,
        results=lambda wildcards, input: parent(input.leaderboard, 2),
        reports=lambda wildcards, output: parent(output.html),
    shell:
        "python -m relaxbench -v report --config {params.config:q} --results {params.results:q}"
        " --reports {params.reports:q} > {log:q} 2>&1"
