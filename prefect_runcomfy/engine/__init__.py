"""The batch engine: a table's rows taken to stored videos, safely and resumably.

One folder per stage a row goes through, in order:

- `inputs/`: read the table, check each row, resolve its media;
- `plan/`: the ledger, what each row needs, what the run may cost;
- `claims/`: overlapping runs never act on one row at once;
- `run/`: submit, wait and store each row within the run's bounds;
- `outputs/`: the output location's store, manifest and previews;
- `shards/`: one table over several flow runs;
- `record/`: the row's typed record and status words, shared by all.

It speaks to RunComfy only through `prefect_runcomfy.api` and never imports the Prefect face
(`tasks`, `flows`).
"""
