"""Claims: overlapping runs never act on the same row at once.

Entry points: `claims.claim` (`RowClaims`, `OwnerLease`, `open_claims`: the exclusive files on
the output's storage), `claims.turn` (`take_turn`, `follow_holder`: a row's turn in a run).
Knows nothing of RunComfy's API.
"""
