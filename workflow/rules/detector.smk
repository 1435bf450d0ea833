# Class-agnostic detector per variant (baseline: seen GT; ggn: seen GT + pseudo-GT; control: seen GT + the
# image-gradient pseudo-GT) and its detections.


rule train_detector:
    input:
        unpack(detector_inputs),
    output:
        checkpoint=f"{RESULTS}/{{exp}}/seed{{seed}}/detector/{{variant}}/checkpoint.pt",
    params:
        images=detector_images,
        variant=trainer_variant,
        flags=detector_flags,
        loaders=lambda wildcards, threads: loaders_per_process(threads, detector_gpus(wildcards)),
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/seed{{seed}}/train_detector-{{variant}}.log",
    threads: job_threads("train_detector")
    resources:
        gpu=detector_gpus,
        nodes=1,
        mem_mb=job_resource("train_detector", "mem_mb"),
        runtime=job_resource("train_detector", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn train-detector --variant {params.variant} --train-json {input.train:q}"
        " --images {params.images:q} --out {output.checkpoint:q} --threads {threads} --workers {params.loaders}"
        " {params.flags} > {log:q} 2>&1"


rule predict:
    input:
        checkpoint=detector_checkpoint,
        eval=f"{RESULTS}/{{exp}}/data/eval.json",
    output:
        detections=f"{RESULTS}/{{exp}}/seed{{seed}}/detector/{{variant}}/detections.json",
    params:
        images=eval_images,
        flags=predict_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/seed{{seed}}/predict-{{variant}}.log",
    threads: job_threads("predict")
    resources:
        gpu=1,
        mem_mb=job_resource("predict", "mem_mb"),
        runtime=job_resource("predict", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn predict --checkpoint {input.checkpoint:q} --annotations {input.eval:q}"
        " --images {params.images:q} --out {output.detections:q} --threads {threads} {params.flags} > {log:q} 2>&1"
