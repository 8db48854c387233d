"""dlabel's retraining side: one job per closed dataset window.

Modules, one concept each:
- ``dataset``: window names, reading a closed window through its manifest
- ``features``: the incremental feature pipeline (scaling, missing values, hashing)
- ``estimators``: the built-in estimators and ``Model`` (feature pipeline + estimator)
- ``custom``: ``CustomModel``, a factory's estimator on the raw features (bring your own)
- ``models``: which of the two a config or a saved state means
- ``training``: the challenger learns incrementally, or is refit on recent windows
- ``metrics``: binary and regression metrics (weighted by ``sample_weight``), overall and per slice
- ``bootstrap``: paired bootstrap confidence intervals of metrics and of gains
- ``drift``: PSI / L-infinity feature drift and label-rate drift between windows
- ``adapt``: ``model.on_drift``, how a drifted window's challenger adapts
- ``evaluation``: which rows judge which challenger (shadow on the next window, or holdout)
- ``promotion``: the champion/challenger rule, on intervals
- ``modelfile``: a model as a verified skops file (checksum, trusted types, load-back)
- ``registry``: versions, checksums, the champion pointer, window records
- ``serving``: the serving model: the champion or an in-window update of it (serving.json)
- ``online``: in-window updates (``model.update_every``): the champion's line learns labels
  as they arrive and is published as a sub-version; the gate at window close is unchanged
- ``online_guard``: rolls in-window updates back when they do worse than the frozen champion
- ``online_feed``: the labeled topic for the updater, and its loop inside ``dlabel jobs``
- ``job``: one retraining job (``python -m jobs.job``)
- ``feed``: the windows topic as the runner reads it (events, windows, data versions)
- ``runner``: the windows-topic runner (subprocess per window, timeout, retries)
- ``reevaluate``: a corrected window version: its models scored again, nothing retrained
- ``launch``: ``jobs.launch``, a command of yours per closed window (docs/launch.md)
- ``report``: the per-window table and the HTML report
- ``loop``: run pending windows, print the table, write the report (for the demo)
- ``cli``: the ``jobs``, ``retrain``, ``models`` and ``report`` commands
- ``configio``: a config to JSON and back, for the job subprocess
"""
