# Data: generate the synthetic dataset when asked, then split seen/unseen classes per the contracts.


rule synth:
    output:
        train=f"{RESULTS}/{{exp}}/synthetic/annotations/instances_train.json",
        eval=f"{RESULTS}/{{exp}}/synthetic/annotations/instances_val.json",
    params:
        out=f"{RESULTS}/{{exp}}/synthetic",
        flags=synth_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/synth.log",
    threads: job_threads("synth")
    resources:
        mem_mb=job_resource("synth", "mem_mb"),
        runtime=job_resource("synth", "runtime"),
    shell:
        "ggn synth --out {params.out:q} --workers {threads} {params.flags} > {log:q} 2>&1"


rule video_frames:
    # Once per frames folder (UVO): the annotated frames of the release's videos, each written atomically and
    # skipped when already there, so that an interrupted run resumes; the manifest says that all are there.
    input:
        unpack(video_frames_source),
    output:
        manifest=f"{{frames}}/{FRAMES_MANIFEST}",
    conda:
        "../envs/ggn.yaml"
    log:
        "{frames}/ggn_frames.log",
    threads: job_threads("video_frames")
    resources:
        mem_mb=job_resource("video_frames", "mem_mb"),
        runtime=job_resource("video_frames", "runtime"),
    shell:
        "ggn video-frames --annotations {input.annotations:q} --videos {input.videos:q} --out {wildcards.frames:q}"
        " --workers {threads} > {log:q} 2>&1"


rule split:
    input:
        train=train_source,
        eval=eval_source,
        frames=eval_frames,
    output:
        train=f"{RESULTS}/{{exp}}/data/train.json",
        eval=f"{RESULTS}/{{exp}}/data/eval.json",
    params:
        flags=split_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/split.log",
    threads: job_threads("split")
    resources:
        mem_mb=job_resource("split", "mem_mb"),
        runtime=job_resource("split", "runtime"),
    shell:
        "ggn split --train-annotations {input.train:q} --eval-annotations {input.eval:q} {params.flags}"
        " --train-out {output.train:q} --eval-out {output.eval:q} > {log:q} 2>&1"


rule list_images:
    output:
        images=f"{RESULTS}/{{exp}}/data/pseudo_images.json",
    params:
        root=lambda wildcards: experiment(wildcards)["pseudo_data"]["images"],
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/list_images.log",
    threads: job_threads("list_images")
    resources:
        mem_mb=job_resource("list_images", "mem_mb"),
        runtime=job_resource("list_images", "runtime"),
    shell:
        "ggn list-images --root {params.root:q} --out {output.images:q} --workers {threads} > {log:q} 2>&1"


rule mining_list:
    # `targets: pseudo`: every training image, with a seen object or not, is mined for pseudo-GT.
    input:
        train=train_source,
    output:
        mining=f"{RESULTS}/{{exp}}/data/mining.json",
    params:
        flags=seen_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/mining_list.log",
    threads: job_threads("split")
    resources:
        mem_mb=job_resource("split", "mem_mb"),
        runtime=job_resource("split", "runtime"),
    shell:
        "ggn split --train-annotations {input.train:q} {params.flags} --mining-out {output.mining:q} > {log:q} 2>&1"
