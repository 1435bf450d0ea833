# Figures for reading the results, and for `snakemake --report report.html`: AR@k curves and candidate
# histograms (`ggn plot`), and panels of a few images (`ggn visualize`) per experiment.


rule plots:
    input:
        unpack(plot_inputs),
    output:
        curves=report(
            f"{RESULTS}/{{exp}}/figures/ar_curves.png",
            caption="../report/ar_curves.rst",
            category="AR@k curves",
            subcategory="{exp}",
        ),
        histograms=report(
            f"{RESULTS}/{{exp}}/figures/candidate_histograms.png",
            caption="../report/histograms.rst",
            category="Candidates",
            subcategory="{exp}",
        ),
    params:
        metrics=plot_metric_flags,
        shards=plot_shard_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/plots.log",
    threads: job_threads("plots")
    resources:
        mem_mb=job_resource("plots", "mem_mb"),
        runtime=job_resource("plots", "runtime"),
    shell:
        "ggn plot --metrics {params.metrics} --curves {output.curves:q} --shards {params.shards}"
        " --histograms {output.histograms:q} > {log:q} 2>&1"


rule visualize:
    input:
        unpack(visualize_inputs),
    output:
        panels=report(
            directory(f"{RESULTS}/{{exp}}/figures/panels"),
            patterns=["{name}.png"],
            caption="../report/panels.rst",
            category="Panels",
            subcategory="{exp}",
        ),
    params:
        flags=visualize_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/visualize.log",
    threads: job_threads("visualize")
    resources:
        mem_mb=job_resource("visualize", "mem_mb"),
        runtime=job_resource("visualize", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ggn visualize --out-dir {output.panels:q} {params.flags} > {log:q} 2>&1"
