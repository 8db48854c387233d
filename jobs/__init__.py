"""dlabel's retraining side: one job per closed dataset window.

Modules, one concept each:
- ``dataset``: window names, reading a closed window through its manifest
- ``features``: the incremental feature pipeline (scaling, missing values, hashing)
- ``estimators``: the built-in estimators and ``Model`` (feature pipeline + estimator)
- ``custom``: ``CustomModel``, a factory's estimator on the raw features (bring your own)
- ``models``: which of the two a config or a saved state means
- ``training``: the challenger learns incrementally, or is refit on recent windows
- ``metrics``: binary and regression metrics, overall and per slice
- ``drift``: PSI / L-infinity feature drift and label-rate drift between windows
- ``promotion``: the champion/challenger rule
- ``registry``: versions, checksums, the champion pointer, window records
- ``job``: one retraining job (``python -m jobs.job``)
- ``runner``: the windows-topic runner (subprocess per window, timeout, retries)
- ``launch``: ``jobs.launch``, a command of yours per closed window (docs/launch.md)
- ``report``: the per-window table and the HTML report
- ``loop``: run pending windows, print the table, write the report (for the demo)
- ``cli``: the ``jobs``, ``retrain``, ``models`` and ``report`` commands
- ``configio``: a config to JSON and back, for the job subprocess
"""
