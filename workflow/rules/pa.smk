# Pairwise-affinity network: training (GPU) and its held-out evaluation.


rule train_pa:
    input:
        train=f"{RESULTS}/{{exp}}/data/train.json",
    output:
        checkpoint=f"{RESULTS}/{{exp}}/seed{{seed}}/pa/checkpoint.pt",
    params:
        images=train_images,
        flags=pa_flags,
        loaders=lambda wildcards, threads: loaders_per_process(threads, pa_gpus(wildcards)),
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/seed{{seed}}/train_pa.log",
    threads: job_threads("train_pa")
    resources:
        gpu=pa_gpus,
        nodes=1,
        mem_mb=job_resource("train_pa", "mem_mb"),
        runtime=job_resource("train_pa", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn train-pa --train-json {input.train:q} --images {params.images:q}"
        " --out {output.checkpoint:q} --threads {threads} --workers {params.loaders} {params.flags} > {log:q} 2>&1"


rule eval_pa:
    input:
        checkpoint=eval_pa_checkpoint,
        eval=f"{RESULTS}/{{exp}}/data/eval.json",
    output:
        metrics=f"{RESULTS}/{{exp}}/{{padir}}/metrics.json",
    params:
        images=eval_images,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{{padir}}/eval_pa.log",
    threads: job_threads("eval_pa")
    resources:
        gpu=1,
        mem_mb=job_resource("eval_pa", "mem_mb"),
        runtime=job_resource("eval_pa", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn eval-pa --checkpoint {input.checkpoint:q} --annotations {input.eval:q}"
        " --images {params.images:q} --out {output.metrics:q} > {log:q} 2>&1"
