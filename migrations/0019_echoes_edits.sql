-- The WhatsApp Business app beside the API, and customers' edits and deletions (issue #19).
--
-- 1. Echoes (smb_message_echoes): what the business typed in the WhatsApp Business app on a coexistence
--    number, stored once as an outbound message with no ledger row (its source is business_app), never
--    sent. It counts as a person taking the conversation over with no assignee: business_app_since is
--    set and the bot stays quiet (storage.replies.HUMAN_OWNED) until someone hands the conversation back
--    or resolves it.
-- 2. Edits and deletions: a message of type edit or revoke (the customer's, or an echo of the business's
--    own) is stored as ever and applied to the message it names: an edit replaces its body (every
--    version kept in versions, oldest first; edited_at is the latest version's time), a revoke sets
--    deleted_at (the content is kept for the team). One that arrives before its original is applied when
--    the original is stored (messages_changes below), as early statuses are.

ALTER TABLE conversations ADD COLUMN business_app_since timestamptz;

ALTER TABLE messages
    ADD COLUMN edited_at timestamptz,
    ADD COLUMN versions jsonb,
    ADD COLUMN deleted_at timestamptz;

-- The changes waiting for (or applied to) each original, by its id: only edit and revoke rows are in it.
CREATE INDEX messages_changes ON messages (channel, (payload -> type ->> 'original_message_id'))
    WHERE type IN ('edit', 'revoke');

-- Apply one change (an edit or revoke row) to its original if that is stored; idempotent.
CREATE FUNCTION wacrm_apply_change(p_change messages) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_original messages;
    v_at timestamptz := COALESCE(p_change.provider_timestamp, p_change.created_at);
    v_versions jsonb;
    v_last jsonb;
BEGIN
    SELECT * INTO v_original FROM messages
    WHERE channel = p_change.channel AND provider_message_id = p_change.payload -> p_change.type ->> 'original_message_id'
      AND contact_id = p_change.contact_id AND direction = p_change.direction AND type NOT IN ('edit', 'revoke')
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- not stored yet: applied when it is
    END IF;
    IF p_change.type = 'revoke' THEN
        UPDATE messages SET deleted_at = v_at WHERE id = v_original.id AND deleted_at IS NULL;
    ELSE
        v_versions := COALESCE(v_original.versions, jsonb_build_array(jsonb_build_object(
            'id', v_original.provider_message_id, 'body', v_original.body,
            'at', COALESCE(v_original.provider_timestamp, v_original.created_at))));
        IF v_versions @> jsonb_build_array(jsonb_build_object('id', p_change.provider_message_id)) THEN
            RETURN;  -- applied before
        END IF;
        -- the original first, the edits in the order they were made (Meta does not keep it)
        SELECT jsonb_build_array(v_versions -> 0) || jsonb_agg(x ORDER BY (x ->> 'at')::timestamptz, x ->> 'id')
        INTO v_versions
        FROM jsonb_array_elements((v_versions - 0) || jsonb_build_array(jsonb_build_object(
            'id', p_change.provider_message_id, 'body', p_change.body, 'at', v_at,
            'caption', p_change.content -> 'message' -> 'caption'))) x;
        v_last := v_versions -> -1;
        UPDATE messages SET versions = v_versions, body = v_last ->> 'body', edited_at = (v_last ->> 'at')::timestamptz,
            content = CASE WHEN content ? 'caption' AND v_last ? 'caption'
                           THEN jsonb_set(content, '{caption}', v_last -> 'caption') ELSE content END
        WHERE id = v_original.id;
    END IF;
    PERFORM wacrm_inbox_event('message', v_original.conversation_id, v_original.id, NULL);
END
$$;

-- A stored change is applied to its original; a stored message gets the changes that arrived before it.
-- Our own sends (a ledger row) are never edited from outside: no lookup for them.
CREATE FUNCTION wacrm_message_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_change messages;
BEGIN
    IF NEW.type IN ('edit', 'revoke') THEN
        PERFORM wacrm_apply_change(NEW);
    ELSE
        FOR v_change IN SELECT * FROM messages
                        WHERE type IN ('edit', 'revoke') AND channel = NEW.channel
                          AND payload -> type ->> 'original_message_id' = NEW.provider_message_id
                        ORDER BY provider_timestamp, id LOOP
            PERFORM wacrm_apply_change(v_change);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_changes AFTER INSERT ON messages FOR EACH ROW
    WHEN (NEW.outbound_log_id IS NULL) EXECUTE FUNCTION wacrm_message_changes();

-- The changes stored before this migration, applied now.
DO $$
DECLARE
    v_change messages;
BEGIN
    FOR v_change IN SELECT * FROM messages WHERE type IN ('edit', 'revoke') ORDER BY provider_timestamp, id LOOP
        PERFORM wacrm_apply_change(v_change);
    END LOOP;
END
$$;

-- Store an echo: the customer it went to (found by phone or business-scoped id, or a new contact with a
-- lead, source business_app), their open conversation (or a new one), the message as outbound with no
-- ledger row; then the conversation is a person's (business_app_since, a new ownership version: drafts
-- of the bot in flight are stale). Returns the conversation id, or NULL when the message id is stored
-- already (one of our own sends, or a replay), which changes nothing.
CREATE FUNCTION wacrm_store_echo(
    p_channel text, p_message_id text, p_phone_number_id text, p_conversation_key text,
    p_wa_id text, p_user_id text, p_profile_name text, p_username text, p_parent_user_id text,
    p_type text, p_body text, p_payload jsonb, p_provider_timestamp timestamptz, p_raw_ref jsonb,
    p_content jsonb, p_context jsonb, p_request_id text
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_contact bigint;
    v_conversation bigint;
    v_message bigint;
BEGIN
    SELECT id INTO v_contact FROM contacts WHERE phone_number_id = p_phone_number_id
      AND (wa_id = p_wa_id OR user_id = p_user_id) ORDER BY id LIMIT 1 FOR UPDATE;
    IF v_contact IS NULL THEN
        INSERT INTO contacts (phone_number_id, wa_id, user_id, profile_name, username, parent_user_id)
        VALUES (p_phone_number_id, p_wa_id, p_user_id, p_profile_name, p_username, p_parent_user_id)
        RETURNING id INTO v_contact;
        INSERT INTO leads (contact_id, source, first_message_id) VALUES (v_contact, 'business_app', p_message_id)
        ON CONFLICT (contact_id) DO NOTHING;
    END IF;

    SELECT id INTO v_conversation FROM conversations
    WHERE phone_number_id = p_phone_number_id AND contact_id = v_contact AND status = 'open' FOR UPDATE;
    IF v_conversation IS NULL THEN
        INSERT INTO conversations (conversation_key, phone_number_id, contact_id)
        VALUES (p_conversation_key, p_phone_number_id, v_contact)
        ON CONFLICT DO NOTHING RETURNING id INTO v_conversation;
        IF v_conversation IS NULL THEN
            SELECT id INTO v_conversation FROM conversations
            WHERE phone_number_id = p_phone_number_id AND contact_id = v_contact AND status = 'open' FOR UPDATE;
        END IF;
    END IF;

    INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                          payload, status, status_at, provider_timestamp, raw_ref, content, context, request_id)
    VALUES (p_channel, p_message_id, v_conversation, v_contact, 'outbound', p_type, p_body, p_payload, 'sent',
            now(), p_provider_timestamp, p_raw_ref, p_content, p_context, p_request_id)
    ON CONFLICT (channel, provider_message_id) DO NOTHING RETURNING id INTO v_message;
    IF v_message IS NULL THEN
        RETURN NULL;
    END IF;

    UPDATE conversations SET business_app_since = COALESCE(business_app_since, now()),
        ownership_version = ownership_version + 1
    WHERE id = v_conversation;
    RETURN v_conversation;
END
$$;

-- Handing the conversation to the WhatsApp Business app (or back) is a change open pages show.
CREATE TRIGGER conversations_business_app AFTER UPDATE OF business_app_since ON conversations FOR EACH ROW
    WHEN (OLD.business_app_since IS DISTINCT FROM NEW.business_app_since)
    EXECUTE FUNCTION wacrm_conversation_changed();
