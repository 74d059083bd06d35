"""Run: carry each planned row through submit, wait and store within a run's bounds.

Entry points: `run.runner` (the one entry point of the flows: plan, run, collect a table),
`run.settings` (a run's frozen settings and the face's hooks), `run.state` (what changes while
it runs), `run.places` (the one way a row holds a place), `run.phases` (planned rows at once),
`run.row` (one row from claim to stored), `run.steps` (the three API steps), `run.waiting`
(polling), `run.durations` (what the run learns of job durations), `run.stopping` (a stop that
cancels what is queued). Reports nothing itself: what people see is `report/`'s.
"""
