"""Outputs: everything written under the output location.

Entry points: `outputs.store` (`OutputStore`: atomic writes through fsspec, exclusive create,
listings), `outputs.manifest` (the run's manifest table), `outputs.previews` (posters and
video probes). Decides nothing about rows.
"""
