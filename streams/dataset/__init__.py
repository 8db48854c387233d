"""The dataset sink: labeled topic -> Parquet windows, manifests, windows events."""
