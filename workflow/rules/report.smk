# Evaluation on unseen classes, one table row per experiment, and the table of all rows.


rule evaluate:
    input:
        detections=f"{RESULTS}/{{exp}}/seed{{seed}}/detector/{{variant}}/detections.json",
        eval=f"{RESULTS}/{{exp}}/data/eval.json",
    output:
        metrics=f"{RESULTS}/{{exp}}/seed{{seed}}/eval/{{variant}}.json",
    params:
        flags=evaluate_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/seed{{seed}}/evaluate-{{variant}}.log",
    threads: job_threads("evaluate")
    resources:
        mem_mb=job_resource("evaluate", "mem_mb"),
        runtime=job_resource("evaluate", "runtime"),
    shell:
        "ggn evaluate --gt {input.eval:q} --detections {input.detections:q} --out {output.metrics:q} {params.flags}"
        " > {log:q} 2>&1"


rule row:
    input:
        unpack(row_inputs),
    output:
        row=f"{RESULTS}/{{exp}}/row.json",
    params:
        metrics=row_metric_flags,
        flags=row_flags,
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/{{exp}}/logs/row.log",
    threads: job_threads("row")
    resources:
        mem_mb=job_resource("row", "mem_mb"),
        runtime=job_resource("row", "runtime"),
    shell:
        "ggn table row {params.metrics} --out {output.row:q}"
        " {params.flags} > {log:q} 2>&1"


rule table:
    input:
        rows=all_rows(),
    output:
        csv=f"{RESULTS}/{TABLE}.csv",
        md=f"{RESULTS}/{TABLE}.md",
        html=report(f"{RESULTS}/{TABLE}.html", caption="../report/table.rst", category="Table"),
    conda:
        "../envs/ggn.yaml"
    log:
        f"{RESULTS}/logs/table.log",
    threads: job_threads("table")
    resources:
        mem_mb=job_resource("table", "mem_mb"),
        runtime=job_resource("table", "runtime"),
    shell:
        "ggn table gather --rows {input.rows:q} --csv {output.csv:q} --md {output.md:q} --html {output.html:q} > {log:q} 2>&1"
