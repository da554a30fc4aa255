-- Fewer row versions per message (issue #12): each UPDATE of a conversation writes a new version
-- of its row and of every index on it, and a message cost five of them.
--
-- 1. One home for what a stored message does to its conversation: the messages_stored trigger.
--    It now also sets last_inbound_at / last_outbound_at, last_message_at and (inbound) unread_count,
--    which wacrm_store_inbound and the sender's record statement each did in an UPDATE of their own:
--    one UPDATE of the conversation per message instead of two.
-- 2. Four indexes no query can use any more go: the conversation list orders by
--    `last_message_at DESC NULLS LAST, id DESC` (the 0012 indexes); these four are in the old
--    NULLS FIRST order, and every update of a conversation's last_message_at still wrote to them.
-- 3. wacrm_store_inbound takes the request id, written with the message instead of by a second
--    UPDATE of the message. The 20-argument form stays (a worker of the previous version calls it
--    during a rolling upgrade) and calls the new one without a request id.

DROP INDEX IF EXISTS conversations_last_message;
DROP INDEX IF EXISTS conversations_inbox;
DROP INDEX IF EXISTS conversations_inbox_assignee;
DROP INDEX IF EXISTS conversations_inbox_all;

CREATE OR REPLACE FUNCTION wacrm_message_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_deleted timestamptz;
    v_at timestamptz := COALESCE(NEW.provider_timestamp, now());
BEGIN
    IF NEW.direction = 'inbound' THEN
        SELECT deleted_at INTO v_deleted FROM conversations WHERE id = NEW.conversation_id;
        UPDATE conversations SET
            last_inbound_at = GREATEST(last_inbound_at, v_at), last_message_at = GREATEST(last_message_at, v_at),
            unread_count = unread_count + 1,
            inbox_status = CASE WHEN inbox_status IN ('snoozed', 'resolved') THEN 'open' ELSE inbox_status END,
            snoozed_until = NULL, deleted_at = NULL, deleted_by = NULL,
            messages_since_intelligence = messages_since_intelligence + 1
        WHERE id = NEW.conversation_id;
        IF v_deleted IS NOT NULL THEN
            INSERT INTO notifications (user_id, kind, body)
            SELECT u.id, 'conversation_restored',
                   'A deleted conversation was restored: the customer wrote again (conversation '
                   || NEW.conversation_id || ')'
            FROM users u WHERE u.role = 'admin' AND u.disabled_at IS NULL;
        END IF;
    ELSE
        UPDATE conversations SET
            last_outbound_at = GREATEST(last_outbound_at, v_at), last_message_at = GREATEST(last_message_at, v_at),
            messages_since_intelligence = messages_since_intelligence + 1
        WHERE id = NEW.conversation_id;
    END IF;
    PERFORM wacrm_inbox_event('message', NEW.conversation_id, NEW.id, NULL);
    RETURN NULL;
END
$$;

-- Returns the conversation id, or NULL when the message was stored before (the caller then
-- rolls back, so a duplicate changes nothing).
CREATE FUNCTION wacrm_store_inbound(
    p_channel text, p_message_id text, p_phone_number_id text, p_conversation_key text,
    p_wa_id text, p_user_id text, p_profile_name text, p_username text, p_parent_user_id text,
    p_type text, p_body text, p_payload jsonb, p_provider_timestamp timestamptz, p_raw_ref jsonb,
    p_content jsonb, p_context jsonb, p_referral jsonb, p_error jsonb, p_lead_source text,
    p_new_wa_id text, p_request_id text
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_contact bigint;
    v_other bigint;
    v_conversation bigint;
    v_message bigint;
BEGIN
    -- The customer by phone or business-scoped id (linking the two), or a new contact.
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM (
        SELECT id FROM contacts WHERE phone_number_id = p_phone_number_id
          AND (wa_id = p_wa_id OR user_id = p_user_id) ORDER BY id FOR UPDATE) found;
    IF v_ids IS NULL THEN
        INSERT INTO contacts (phone_number_id, wa_id, user_id, profile_name, username, parent_user_id)
        VALUES (p_phone_number_id, p_wa_id, p_user_id, p_profile_name, p_username, p_parent_user_id)
        RETURNING id INTO v_contact;
    ELSE
        v_contact := v_ids[1];
        FOR i IN 2 .. array_length(v_ids, 1) LOOP  -- two contacts until this message linked them
            PERFORM wacrm_merge_contacts(v_contact, v_ids[i]);
        END LOOP;
        UPDATE contacts SET wa_id = COALESCE(p_wa_id, wa_id), user_id = COALESCE(user_id, p_user_id),
            profile_name = COALESCE(p_profile_name, profile_name), username = COALESCE(p_username, username),
            parent_user_id = COALESCE(p_parent_user_id, parent_user_id), updated_at = now()
        WHERE id = v_contact
          AND (wa_id IS DISTINCT FROM COALESCE(p_wa_id, wa_id) OR user_id IS DISTINCT FROM COALESCE(user_id, p_user_id)
               OR profile_name IS DISTINCT FROM COALESCE(p_profile_name, profile_name)
               OR username IS DISTINCT FROM COALESCE(p_username, username)
               OR parent_user_id IS DISTINCT FROM COALESCE(p_parent_user_id, parent_user_id));
    END IF;

    -- The open conversation, or a new one (another worker may create it meanwhile).
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

    -- its trigger (messages_stored) brings the conversation up to date
    INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                          payload, status, status_at, provider_timestamp, raw_ref, content, context, referral, error,
                          request_id)
    VALUES (p_channel, p_message_id, v_conversation, v_contact, 'inbound', p_type, p_body, p_payload, 'received',
            now(), p_provider_timestamp, p_raw_ref, p_content, p_context, p_referral, p_error, p_request_id)
    ON CONFLICT (channel, provider_message_id) DO NOTHING RETURNING id INTO v_message;
    IF v_message IS NULL THEN
        RETURN NULL;
    END IF;

    IF v_ids IS NULL THEN
        INSERT INTO leads (contact_id, source, referral, first_message_id)
        VALUES (v_contact, p_lead_source, p_referral, p_message_id) ON CONFLICT (contact_id) DO NOTHING;
    END IF;

    -- A customer moved to a new phone number (system user_changed_number): keep one contact.
    IF p_new_wa_id IS NOT NULL THEN
        SELECT id INTO v_other FROM contacts
        WHERE phone_number_id = p_phone_number_id AND wa_id = p_new_wa_id AND id <> v_contact FOR UPDATE;
        IF v_other IS NOT NULL THEN
            PERFORM wacrm_merge_contacts(v_contact, v_other);
        END IF;
        UPDATE contacts SET previous_wa_ids = CASE WHEN wa_id IS NULL OR wa_id = p_new_wa_id
                                                       OR wa_id = ANY(previous_wa_ids)
                                                  THEN previous_wa_ids ELSE previous_wa_ids || wa_id END,
            wa_id = p_new_wa_id, updated_at = now()
        WHERE id = v_contact;
    END IF;
    RETURN v_conversation;
END
$$;

CREATE OR REPLACE FUNCTION wacrm_store_inbound(
    p_channel text, p_message_id text, p_phone_number_id text, p_conversation_key text,
    p_wa_id text, p_user_id text, p_profile_name text, p_username text, p_parent_user_id text,
    p_type text, p_body text, p_payload jsonb, p_provider_timestamp timestamptz, p_raw_ref jsonb,
    p_content jsonb, p_context jsonb, p_referral jsonb, p_error jsonb, p_lead_source text,
    p_new_wa_id text
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT wacrm_store_inbound(p_channel, p_message_id, p_phone_number_id, p_conversation_key, p_wa_id, p_user_id,
                               p_profile_name, p_username, p_parent_user_id, p_type, p_body, p_payload,
                               p_provider_timestamp, p_raw_ref, p_content, p_context, p_referral, p_error,
                               p_lead_source, p_new_wa_id, NULL::text)
$$;
