"""Paper experiments and claim verdicts: outside the installed package (the library never imports this).

  python -m experiments.run NAME[:VARIANT] --workdir=W [--seeds=0,1,2] [--rows=a,b] [--parallel=N]
      [--report-only] [--config.X=V ...]

run.py (the CLI), experiment.py (what an experiment is), runner.py (the one rows x seeds runner), report.py (the
one report writer), stats.py (paired bootstrap CIs and verdicts), metrics.py (shared columns, per-item scores);
one module per system: classifier.py (S1), region_word.py (S2), mfsr.py (S3), single_stream.py (S4),
captioning.py (S5). docs/experiments.md describes them.
"""
