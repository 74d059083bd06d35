"""A row's record: the one typed `RowOutcome` each step returns anew, and the status words.

Entry points: `record.outcome.RowOutcome`, `record.status` (`RowStatus`, `LedgerState`,
`RowPlan`). Imports nothing else of the engine: every stage depends on it, it on none.
"""
