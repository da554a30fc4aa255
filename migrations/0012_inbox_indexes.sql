-- Indexes for the inbox at scale (measured with `python -m bench --only inbox` on 100,000
-- conversations and 1,000,000 messages; EXPLAIN ANALYZE figures in NOTES-bench.md).
--
-- The conversation list orders by `last_message_at DESC NULLS LAST, id DESC`. The 0008 indexes
-- are on `last_message_at DESC` (NULLS FIRST, the default for DESC), which the planner cannot use
-- for that order: every list sorted all the conversations (about 40 ms, 150 ms once PostgreSQL
-- switched to a generic plan). These match the ORDER BY, under the same `deleted_at IS NULL`
-- the list filters on: all, by status, by assignee (`me` and `unassigned`: IS NULL is indexable).
CREATE INDEX IF NOT EXISTS conversations_inbox_recent
    ON conversations (last_message_at DESC NULLS LAST, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS conversations_inbox_status_recent
    ON conversations (inbox_status, last_message_at DESC NULLS LAST, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS conversations_inbox_assignee_recent
    ON conversations (assigned_user_id, last_message_at DESC NULLS LAST, id DESC) WHERE deleted_at IS NULL;
-- The list's counts (per status, mine, unassigned) from the index alone: an index-only scan of
-- two narrow columns instead of the table.
CREATE INDEX IF NOT EXISTS conversations_inbox_counts
    ON conversations (inbox_status, assigned_user_id) WHERE deleted_at IS NULL;
-- The detail's unsent replies (a conversation's ledger rows not yet sent): without these, a scan
-- of the whole ledger and an anti-join over every message (about 40 ms with 460,000 ledger rows).
CREATE INDEX IF NOT EXISTS outbound_log_conversation_unsent
    ON outbound_log (conversation_id, id DESC) WHERE state <> 'sent';
CREATE INDEX IF NOT EXISTS messages_outbound_log
    ON messages (outbound_log_id) WHERE outbound_log_id IS NOT NULL;
