-- Storing an inbound message (match or create the contact, merging two identities of one
-- customer; open conversation; message; lead; a changed number) in one call: one round trip
-- instead of five to ten, so the inbound agent can pipeline a batch (storage.repo.store_inbound).

-- Fold contact p_secondary into p_primary: one customer seen under two identities becomes one
-- contact. Its conversations and messages move over (an open conversation of its own is closed
-- when the primary has one open, to keep one open conversation per customer); its lead goes
-- unless the primary has none.
CREATE FUNCTION wacrm_merge_contacts(p_primary bigint, p_secondary bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    UPDATE conversations s SET status = 'closed'
    WHERE s.contact_id = p_secondary AND s.status = 'open'
      AND EXISTS (SELECT 1 FROM conversations p WHERE p.contact_id = p_primary AND p.status = 'open'
                  AND p.phone_number_id = s.phone_number_id);
    UPDATE conversations SET contact_id = p_primary WHERE contact_id = p_secondary;
    UPDATE messages SET contact_id = p_primary WHERE contact_id = p_secondary;
    UPDATE leads SET contact_id = p_primary WHERE contact_id = p_secondary
      AND NOT EXISTS (SELECT 1 FROM leads WHERE contact_id = p_primary);
    DELETE FROM leads WHERE contact_id = p_secondary;
    DELETE FROM contacts WHERE id = p_secondary
    RETURNING wa_id, user_id, parent_user_id, username, profile_name, opted_out, previous_wa_ids INTO m;
    UPDATE contacts SET wa_id = COALESCE(wa_id, m.wa_id), user_id = COALESCE(user_id, m.user_id),
        parent_user_id = COALESCE(parent_user_id, m.parent_user_id), username = COALESCE(username, m.username),
        profile_name = COALESCE(profile_name, m.profile_name), opted_out = opted_out OR m.opted_out,
        previous_wa_ids = previous_wa_ids || m.previous_wa_ids, updated_at = now()
    WHERE id = p_primary;
END
$$;

-- Returns the conversation id, or NULL when the message was stored before (the caller then
-- rolls back, so a duplicate changes nothing).
CREATE FUNCTION wacrm_store_inbound(
    p_channel text, p_message_id text, p_phone_number_id text, p_conversation_key text,
    p_wa_id text, p_user_id text, p_profile_name text, p_username text, p_parent_user_id text,
    p_type text, p_body text, p_payload jsonb, p_provider_timestamp timestamptz, p_raw_ref jsonb,
    p_content jsonb, p_context jsonb, p_referral jsonb, p_error jsonb, p_lead_source text,
    p_new_wa_id text
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
        WHERE id = v_contact;
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

    INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                          payload, status, status_at, provider_timestamp, raw_ref, content, context, referral, error)
    VALUES (p_channel, p_message_id, v_conversation, v_contact, 'inbound', p_type, p_body, p_payload, 'received',
            now(), p_provider_timestamp, p_raw_ref, p_content, p_context, p_referral, p_error)
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

    UPDATE conversations SET last_inbound_at = GREATEST(last_inbound_at, p_provider_timestamp),
        last_message_at = GREATEST(last_message_at, p_provider_timestamp), unread_count = unread_count + 1
    WHERE id = v_conversation;
    RETURN v_conversation;
END
$$;
