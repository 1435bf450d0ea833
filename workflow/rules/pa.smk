# Pairwise-affinity network: training (GPU) and its held-out evaluation.


rule train_pa:
    input:
        train=f"{RESULTS}/{{exp}}/data/train.json",
    output:
        checkpoint=f"{RESULTS}/{{exp}}/pa/checkpoint.pt",
    params:
        images=train_images,
        flags=pa_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/train_pa.log",
    threads: 2
    resources:
        gpu=pa_gpus,
        nodes=1,
        mem_mb=32000,
        runtime=24 * 60,
    shell:
        "OMP_NUM_THREADS={threads} ggn train-pa --train-json {input.train} --images {params.images}"
        " --out {output.checkpoint} --threads {threads} {params.flags} > {log} 2>&1"


rule eval_pa:
    input:
        checkpoint=f"{RESULTS}/{{exp}}/pa/checkpoint.pt",
        eval=f"{RESULTS}/{{exp}}/data/eval.json",
    output:
        metrics=f"{RESULTS}/{{exp}}/pa/metrics.json",
    params:
        images=eval_images,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/eval_pa.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    shell:
        "OMP_NUM_THREADS={threads} ggn eval-pa --checkpoint {input.checkpoint} --annotations {input.eval}"
        " --images {params.images} --out {output.metrics} > {log} 2>&1"
