-- The worker samples the sends nothing has settled yet every few seconds (wacrm_ambiguous_unsettled):
-- an index of just those rows, so the sample does not scan the ledger.
CREATE INDEX IF NOT EXISTS outbound_log_unsettled ON outbound_log (ambiguous_since)
    WHERE state IN ('ambiguous', 'unconfirmed');
