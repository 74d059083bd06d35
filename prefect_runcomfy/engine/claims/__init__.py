"""Claims: overlapping runs never act on the same row at once.

Entry point: `claims.claim` (`RowClaims`, `OwnerLease`, `open_claims`): the exclusive files on
the output's storage that say which run may act on a row, and each run's lease. A row's turn
in a run (take the claim, decide again, follow a holder) is `run.turn`'s. Knows nothing of
RunComfy's API.
"""
