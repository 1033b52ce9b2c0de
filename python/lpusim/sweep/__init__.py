"""`lpusim sweep`: rack-scale plans (llm/plan.py) over a grid of chips, layouts, precisions, contexts and
concurrencies, on a process pool or a Ray cluster, with the plans' pieces cached on disk (docs/llm.md 4.4).

    from lpusim.sweep.spec import SweepSpec
    from lpusim.sweep.run import run_sweep
    rows = run_sweep(SweepSpec.from_dict({"model": "llama-2-7b", "chips": [8, 16, "auto"]}),
                     cache_dir="~/.cache/lpusim/pieces")

spec.py: the axes and their points; run.py: a point's row and the executors; table.py: CSV, Parquet, text;
plots.py: the plots; output.py: the files of `--out`.
"""
