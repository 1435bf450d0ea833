# Pseudo ground truth: sharded extraction (PA + grouping + ranking), optionally re-ranked per shard by the
# row's baseline OLN detector (Pseudo-OLN, rank.by: oln), then one merge, and its quality where the mined
# images have every class annotated. `{pdir}` is the PA network's pseudo-GT folder (seed{s}/pseudo: one per seed
# of the PA network) or the no-learning control's (pseudo_control: the same grouping on the image gradient, which
# no seed changes); see pseudo_dir in common.smk.


rule extract:
    input:
        unpack(extract_inputs),
    output:
        shard=f"{RESULTS}/{{exp}}/{{pdir}}/shards/{{shard}}-of-{{nshards}}.parquet",
    params:
        affinity=affinity_flags,
        images=pseudo_images,
        flags=extract_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{{pdir}}/extract-{{shard}}-of-{{nshards}}.log",
    threads: job_threads("extract")
    resources:
        gpu=1,
        mem_mb=job_resource("extract", "mem_mb"),
        runtime=job_resource("extract", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn extract {params.affinity} --annotations {input.images_list:q}"
        " --images {params.images:q} --shard {wildcards.shard} --num-shards {wildcards.nshards}"
        " --out {output.shard:q} --workers {threads} {params.flags} > {log:q} 2>&1"


rule rank_oln:
    input:
        shard=f"{RESULTS}/{{exp}}/{{pdir}}/shards/{{shard}}-of-{{nshards}}.parquet",
        checkpoint=lambda wildcards: detector_path(wildcards.exp, pdir_seed(wildcards.pdir), "baseline"),
        images_list=pseudo_annotations,
    output:
        shard=f"{RESULTS}/{{exp}}/{{pdir}}/ranked/{{shard}}-of-{{nshards}}.parquet",
    params:
        images=pseudo_images,
        flags=rank_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{{pdir}}/rank_oln-{{shard}}-of-{{nshards}}.log",
    threads: job_threads("rank_oln")
    resources:
        gpu=1,
        mem_mb=job_resource("rank_oln", "mem_mb"),
        runtime=job_resource("rank_oln", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn rank-oln --shard {input.shard:q} --checkpoint {input.checkpoint:q}"
        " --annotations {input.images_list:q} --images {params.images:q} --out {output.shard:q} --threads {threads}"
        " {params.flags} > {log:q} 2>&1"


ruleorder: import_pseudo > extract


rule import_pseudo:
    """The authors' released pseudo-GT (reference.pseudo_gt) as the one shard merge filters (top-k, gt_iou)."""
    input:
        released=reference_pseudo_file,
        images_list=pseudo_annotations,
    output:
        shard=f"{RESULTS}/{{exp}}/{REFERENCE_PSEUDO}/shards/0-of-1.parquet",
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{REFERENCE_PSEUDO}/import_pseudo.log",
    threads: job_threads("merge")
    resources:
        mem_mb=job_resource("merge", "mem_mb"),
        runtime=job_resource("merge", "runtime"),
    shell:
        "ggn import-pseudo --released {input.released:q} --annotations {input.images_list:q}"
        " --out {output.shard:q} > {log:q} 2>&1"


rule compare_reference:
    """Ladder rung (c): the share of the authors' kept pseudo-GT masks that our grouping of their PA network
    reproduces, on the images of the first extraction shard (docs/parity_ladder.md)."""
    input:
        unpack(compare_reference_inputs),
    output:
        comparison=f"{RESULTS}/{{exp}}/pseudo/compare_reference.json",
    params:
        flags=compare_reference_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/pseudo/compare_reference.log",
    threads: job_threads("merge")
    resources:
        mem_mb=job_resource("merge", "mem_mb"),
        runtime=job_resource("merge", "runtime"),
    shell:
        "ggn compare-pseudo --ours {input.shard:q} --theirs {input.released:q} --annotations {input.images_list:q}"
        " --out {output.comparison:q} {params.flags} > {log:q} 2>&1"


rule merge:
    input:
        shards=shard_files,
        images_list=pseudo_annotations,
    output:
        pseudo=f"{RESULTS}/{{exp}}/{{pdir}}/pseudo_gt.json",
    params:
        flags=merge_flags,
        store=merge_store,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{{pdir}}/merge.log",
    threads: job_threads("merge")
    resources:
        mem_mb=job_resource("merge", "mem_mb"),
        runtime=job_resource("merge", "runtime"),
    shell:
        "ggn merge --shards {input.shards:q} --annotations {input.images_list:q} --out {output.pseudo:q}"
        " {params.store} {params.flags} > {log:q} 2>&1"


rule eval_pseudo:
    input:
        shards=shard_files,
        pseudo=f"{RESULTS}/{{exp}}/{{pdir}}/pseudo_gt.json",
        images_list=pseudo_annotations,
        full=train_source,
    output:
        quality=f"{RESULTS}/{{exp}}/{{pdir}}/quality.json",
    params:
        flags=seen_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/{{pdir}}/eval_pseudo.log",
    threads: job_threads("eval_pseudo")
    resources:
        mem_mb=job_resource("eval_pseudo", "mem_mb"),
        runtime=job_resource("eval_pseudo", "runtime"),
    shell:
        "ggn eval-pseudo --shards {input.shards:q} --pseudo-gt {input.pseudo:q} --mined {input.images_list:q}"
        " --full-annotations {input.full:q} --out {output.quality:q} {params.flags} > {log:q} 2>&1"
