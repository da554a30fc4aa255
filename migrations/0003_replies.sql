-- Replies: burst coalescing, the outbox, retries, number pauses.

-- A conversation with unanswered customer messages has reply_due_at set: the orchestrator
-- answers every inbound message after reply_upto_message_id at that time (one reply per burst).
ALTER TABLE conversations
    ADD COLUMN reply_due_at timestamptz,
    ADD COLUMN reply_pending_since timestamptz,
    ADD COLUMN reply_upto_message_id bigint NOT NULL DEFAULT 0;
CREATE INDEX conversations_reply_due ON conversations (reply_due_at) WHERE reply_due_at IS NOT NULL;

-- The ledger is also the outbox: a queued row whose publish is not confirmed is published again.
ALTER TABLE outbound_log
    ADD COLUMN published_at timestamptz,
    ADD COLUMN automatic boolean NOT NULL DEFAULT true,
    ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE outbound_log DROP CONSTRAINT outbound_log_state_check;
ALTER TABLE outbound_log ADD CONSTRAINT outbound_log_state_check
    CHECK (state IN ('queued', 'sending', 'retry_wait', 'sent', 'failed', 'ambiguous', 'dropped'));
DROP INDEX outbound_log_state;
CREATE INDEX outbound_log_unpublished ON outbound_log (created_at) WHERE state = 'queued';

-- Sending paused for a business number (token expired, spam rate limit) until a time.
CREATE TABLE number_pauses (
    phone_number_id  text PRIMARY KEY,
    reason           text NOT NULL,
    until            timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
