"""Run: carry each planned row through submit, wait and store within a run's bounds.

Entry points: `run.phases` (the stages of a run, called by the flows), `run.row` (one row from
claim to stored), `run.steps` (the three API steps), `run.waiting` (polling),
`run.durations` (what the run learns of job durations), `run.stopping` (a stop that cancels
what is queued), `run.batch` (a run's settings and shared state). Reports nothing itself:
what people see is `report/`'s.
"""
