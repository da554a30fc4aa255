-- Inbound media (issue #20): one row per Meta media id, the ledger of its download.
--
-- A customer's image, audio, video, document or sticker is stored as a message at once (its caption
-- answered like any text); the row below is made beside it by a trigger that fires only for those
-- types, so a text message pays nothing for media. The media agent claims the row (one download per
-- media id, across redeliveries, replays and restarts), fetches the bytes and records the outcome.
--
-- state: pending (waiting, or retrying at next_attempt_at) → downloading (claimed at claimed_at)
--        → stored | failed | too_large; stored → expired (wacrm media prune, past MEDIA_RETENTION_DAYS).

-- The keys are named as PostgreSQL would name them, so `wacrm verify-schema` finds their migration.
CREATE TABLE media (
    id                 bigserial CONSTRAINT media_pkey PRIMARY KEY,
    provider_media_id  text NOT NULL CONSTRAINT media_provider_media_id_key UNIQUE,
    message_id         bigint NOT NULL REFERENCES messages (id),
    conversation_id    bigint NOT NULL REFERENCES conversations (id),
    conversation_key   text NOT NULL,
    phone_number_id    text NOT NULL,
    type               text NOT NULL,
    mime_type          text,
    filename           text,
    caption            text,
    sha256             text,            -- the webhook's (base64, as Meta sends it) until the download's (hex)
    size               bigint,
    state              text NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'downloading', 'stored', 'failed', 'too_large', 'expired')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    claimed_at         timestamptz,
    published_at       timestamptz,
    error              jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    stored_at          timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_message ON media (message_id);
CREATE INDEX media_unfinished ON media (next_attempt_at) WHERE state IN ('pending', 'downloading');
CREATE INDEX media_stored ON media (stored_at) WHERE state = 'stored';
CREATE INDEX media_content ON media (sha256) WHERE state IN ('stored', 'expired');

CREATE FUNCTION wacrm_media_received() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.content ->> 'media_id' IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO media (provider_media_id, message_id, conversation_id, conversation_key, phone_number_id, type,
                       mime_type, filename, caption, sha256)
    SELECT NEW.content ->> 'media_id', NEW.id, NEW.conversation_id, c.conversation_key, c.phone_number_id, NEW.type,
           NEW.content ->> 'mime_type', NEW.content ->> 'filename', NEW.content ->> 'caption',
           NEW.content ->> 'sha256'
    FROM conversations c WHERE c.id = NEW.conversation_id
    ON CONFLICT (provider_media_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_media_received AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.direction = 'inbound' AND NEW.type IN ('image', 'audio', 'video', 'document', 'sticker'))
    EXECUTE FUNCTION wacrm_media_received();
