"""One `relaxbench data` job per task: generate (or convert) its data into the cache.

The folder is keyed by the hash of the task's parameters and generator version (`data_key`), so changing a
task's parameters writes a new folder and reruns that task's runs, and nothing else; a swept task parameter
(`sweeps:` of a model entry) has one folder per value, generated once for every run that uses it.
`DONE.json` is written last by the task, so a killed job leaves no `DONE.json` and is simply rerun.
"""


rule data:
    """Generate (or convert) one task's data into its cache folder."""
    output:
        done=layout.snakemake_pattern(layout.DATA, "DONE.json"),
    log:
        layout.snakemake_pattern(layout.DATA_LOG),
    benchmark:
        layout.snakemake_pattern(layout.DATA_BENCHMARK)
    conda:
        "../envs/relaxbench.yaml"
    threads: RULE_REQUESTS["data"][0]
    resources:
        **RULE_REQUESTS["data"][1],
    params:
        config=config_path,
        folder=lambda wildcards, output: parent(output.done),
    shell:
        "python -m relaxbench -v data --config {params.config:q} --task {wildcards.task} --key {wildcards.key}"
        " --out {params.folder:q}"
        " > {log:q} 2>&1"
