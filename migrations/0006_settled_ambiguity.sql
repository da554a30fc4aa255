-- Ambiguous sends settled by statuses, the settle timer, and per-conversation order on the way out.

-- ambiguous_since: when the row first became ambiguous (never cleared). settled_by: what ended the
-- ambiguity (or the flight) -- 'status' (a status webhook naming the row), 'answer' (the Graph API's
-- own late answer), 'task' (a person checks), 'resend' (AMBIGUOUS_POLICY=resend).
-- 'unconfirmed': the outcome is unknown and a person was asked to check; a later status still settles it.
ALTER TABLE outbound_log
    ADD COLUMN ambiguous_since timestamptz,
    ADD COLUMN settled_by text CHECK (settled_by IN ('status', 'answer', 'task', 'resend'));
ALTER TABLE outbound_log DROP CONSTRAINT outbound_log_state_check;
ALTER TABLE outbound_log ADD CONSTRAINT outbound_log_state_check
    CHECK (state IN ('queued', 'sending', 'retry_wait', 'sent', 'failed', 'ambiguous', 'unconfirmed', 'dropped'));

-- A conversation's unfinished replies, for "is an earlier reply of this conversation still on its way".
CREATE INDEX outbound_log_unfinished ON outbound_log (conversation_id, id)
    WHERE state IN ('queued', 'retry_wait', 'sending');
-- The settle timer: sends in flight too long, ambiguous rows past AMBIGUOUS_SETTLE_SECONDS.
CREATE INDEX outbound_log_in_flight ON outbound_log (claimed_at) WHERE state = 'sending';
CREATE INDEX outbound_log_ambiguous ON outbound_log (finished_at) WHERE state = 'ambiguous';
