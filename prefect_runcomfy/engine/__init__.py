"""The batch engine: a table's rows taken to stored videos, safely and resumably.

`table` reads and validates; `media` makes inputs fetchable; `ledger` and `planning` decide
what may be paid for; `steps` and `waiting` submit, wait and store one job; `batch` runs a
row through them; `storage` and `manifest` own the output layout. It speaks to RunComfy only
through `prefect_runcomfy.api` and never imports the Prefect face (`tasks`, `flows`).
"""
