-- Room for HOT updates (issue #22). An UPDATE that changes no indexed column writes no index entry
-- (a heap-only tuple) when the row's page has room for the new version; at the default fillfactor
-- (100) a page is full when written, so most updates of a new row wrote every index of its table.
-- - messages: a sent message's status moves up to three times (sent, delivered, read); status,
--   status_at and error are in no index, but a non-HOT update writes all nine (the trigram one too);
-- - conversations: the reply bookkeeping (reply_upto_message_id, reply_pending_since) and the
--   intelligence are in no index. The message triggers' updates still write every index:
--   last_message_at is the inbox list's sort key and messages_since_intelligence is in
--   conversations_intelligence_due's predicate.
-- Pages written from now on keep the room; existing pages are unchanged until rewritten.
ALTER TABLE messages SET (fillfactor = 80);
ALTER TABLE conversations SET (fillfactor = 70);
