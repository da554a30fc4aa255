-- A person can mend a failed reply (issue #18): retry it under its own ledger row.
--
-- retries: how many times a person (POST /api/v1/outbound/{id}/retry) or an operator (`wacrm dlq
-- redrive`) queued the failed row again; retried_at / retried_by: the last time, and who (NULL: an
-- operator's redrive). Each retry moves the row failed -> queued in one guarded statement.
ALTER TABLE outbound_log
    ADD COLUMN retries integer NOT NULL DEFAULT 0,
    ADD COLUMN retried_at timestamptz,
    ADD COLUMN retried_by bigint REFERENCES users (id);

-- A reply that fails, and one queued again after failing, is news for the open thread whoever wrote
-- it (the bot's too): a status event for its conversation, as for a person's reply.
DROP TRIGGER outbound_log_manual_state ON outbound_log;
CREATE TRIGGER outbound_log_manual_state AFTER UPDATE OF state ON outbound_log FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND (NOT NEW.automatic OR NEW.state = 'failed' OR OLD.state = 'failed'))
    EXECUTE FUNCTION wacrm_manual_reply_changed();
