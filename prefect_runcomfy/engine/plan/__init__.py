"""Plan: decide what each row needs (submit, collect, nothing) from the ledger on the output's
storage, and what the run may cost.

Entry points: `plan.ledger` (`Ledger`, `plan_row`), `plan.planning` (`plan_rows`),
`plan.pricing` (`estimate_cost`). Decides; never submits, waits or downloads.
"""
