-- Sending media (issue #20): a person's file goes through the ledger like any reply.
--
-- The inbox keeps the file in the media store and queues an intent of kind 'media' naming it
-- (intent.media: type, mime_type, sha256, size, filename, caption). The sender uploads the file to
-- the number's /media and records Meta's media id here BEFORE the send, so a retry after the upload
-- sends the same upload again instead of uploading anew (an upload is not idempotent at Meta; an
-- upload whose answer was lost only leaves an unused file there).
ALTER TABLE outbound_log ADD COLUMN media_upload_id text;

-- The sent file in the thread: when the message of a media reply is stored, a media row beside it,
-- 'stored' already (the file is in the store since the inbox took it), so the thread shows it like a
-- customer's. The trigger fires only for our media replies: a text send pays nothing for it.
CREATE FUNCTION wacrm_media_sent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO media (provider_media_id, message_id, conversation_id, conversation_key, phone_number_id, type,
                       mime_type, filename, caption, sha256, size, state, stored_at)
    SELECT COALESCE(o.media_upload_id, 'outbound:' || o.id), NEW.id, NEW.conversation_id, c.conversation_key,
           c.phone_number_id, o.intent -> 'media' ->> 'type', o.intent -> 'media' ->> 'mime_type',
           o.intent -> 'media' ->> 'filename', o.intent -> 'media' ->> 'caption', o.intent -> 'media' ->> 'sha256',
           (o.intent -> 'media' ->> 'size')::bigint, 'stored', now()
    FROM outbound_log o JOIN conversations c ON c.id = NEW.conversation_id
    WHERE o.id = NEW.outbound_log_id AND o.intent ->> 'kind' = 'media'
    ON CONFLICT (provider_media_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_media_sent AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.direction = 'outbound' AND NEW.outbound_log_id IS NOT NULL
                       AND NEW.type IN ('image', 'audio', 'video', 'document', 'sticker'))
    EXECUTE FUNCTION wacrm_media_sent();
