"""Inputs: read the user's table, check every row, and resolve its media to URLs RunComfy can
fetch.

Entry points: `inputs.table` (`read_table`, `prepare_rows`, `check_table`), `inputs.media`
(`MediaResolver`). Sends nothing to RunComfy and writes no ledger: a bad row is reported here,
by row and column, before anything is paid.
"""
