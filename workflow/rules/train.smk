"""One `relaxbench train` job per run (task x model x method x seed).

`{model}` is the model's run folder: the entry's key, or `<key>+<axis>=<value>+...` for a swept cell off the
entry's base values. `params.config_hash` is the hash of everything the run depends on except its seed
(`run_hash` of `resolve_run`): Snakemake's params trigger reruns a run exactly when its own settings change, so editing
one model's entry reruns that model's runs and nothing else. `record.json` is written last, atomically; a
diverged or failed run still writes its record (status `diverged` / `failed`) and exits 0, so it stays
visible in the leaderboard instead of stopping the workflow. `--resume` continues a killed job from its last
checkpoint when the config asks for checkpoints (`training.checkpoint_every`) and the checkpoint belongs to
the same settings; otherwise the run starts over.
"""


rule train:
    """Train one run (task x model x method x seed) and write its record."""
    input:
        data=data_done,
    output:
        record=layout.snakemake_pattern(layout.RUN, "record.json"),
        history=layout.snakemake_pattern(layout.RUN, "history.csv"),
    log:
        layout.snakemake_pattern(layout.RUN_LOG),
    benchmark:
        layout.snakemake_pattern(layout.RUN_BENCHMARK)
    conda:
        "../envs/relaxbench.yaml"
    threads: RULE_REQUESTS["train"][0]
    resources:
        **RULE_REQUESTS["train"][1],
    params:
        config=config_path,
        config_hash=config_hash,
        folder=lambda wildcards, output: parent(output.record),
        data=lambda wildcards, input: parent(input.data),
    shell:
        "python -m relaxbench -v train --config {params.config:q} --task {wildcards.task} --model {wildcards.model:q}"
        " --method {wildcards.method} --seed {wildcards.seed} --out {params.folder:q}"
        " --data-dir {params.data:q} --threads {threads} --resume --quiet > {log:q} 2>&1"
