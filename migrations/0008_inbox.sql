-- The inbox: a conversation's workflow status (open, pending, resolved, snoozed), soft delete,
-- intelligence, private notes, notification snoozes, who wrote a person's reply, and the live
-- event log that feeds GET /api/v1/events (LISTEN/NOTIFY, resumable by id).

-- conversations.status stays the pipeline's own open/closed (one open conversation per customer);
-- inbox_status is what people set.
ALTER TABLE conversations
    ADD COLUMN inbox_status text NOT NULL DEFAULT 'open'
        CHECK (inbox_status IN ('open', 'pending', 'resolved', 'snoozed')),
    ADD COLUMN snoozed_until timestamptz,
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN deleted_by bigint REFERENCES users (id),
    ADD COLUMN intelligence jsonb,
    ADD COLUMN intelligence_at timestamptz,
    ADD COLUMN messages_since_intelligence integer NOT NULL DEFAULT 0;
CREATE INDEX conversations_inbox ON conversations (inbox_status, last_message_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX conversations_inbox_assignee ON conversations (assigned_user_id, last_message_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX conversations_inbox_all ON conversations (last_message_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX conversations_deleted ON conversations (deleted_at DESC) WHERE deleted_at IS NOT NULL;
CREATE INDEX conversations_snoozed ON conversations (snoozed_until) WHERE inbox_status = 'snoozed';
CREATE INDEX conversations_intelligence_due ON conversations (id) WHERE messages_since_intelligence > 0;

-- The lead's score from the intelligence; stage_set_by: the person who last set the stage (the
-- intelligence moves a stage only forward; a person may move it anywhere).
ALTER TABLE leads
    ADD COLUMN score integer CHECK (score BETWEEN 0 AND 100),
    ADD COLUMN stage_set_by bigint REFERENCES users (id),
    ADD COLUMN stage_updated_at timestamptz;

CREATE TABLE notes (
    id               bigserial PRIMARY KEY,
    conversation_id  bigint NOT NULL REFERENCES conversations (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    body             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notes_conversation ON notes (conversation_id, id);

ALTER TABLE notifications ADD COLUMN snoozed_until timestamptz;
CREATE INDEX notifications_recent ON notifications (id DESC);
CREATE INDEX tasks_status ON tasks (status, id DESC);

-- A person's reply: who wrote it (the message's author in the inbox).
ALTER TABLE outbound_log ADD COLUMN author_user_id bigint REFERENCES users (id);

-- The live event log: one row per event, NOTIFY'd on channel wacrm_inbox with the row as JSON.
-- Rows carry ids only (a status event without message_id: a person's reply moved in the ledger).
-- Kept a day (the inbox server prunes), long enough for any reconnect.
CREATE TABLE inbox_events (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('message', 'status', 'conversation', 'notification')),
    conversation_id  bigint,
    message_id       bigint,
    notification_id  bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_events_created ON inbox_events (created_at);

CREATE FUNCTION wacrm_inbox_event(p_kind text, p_conversation bigint, p_message bigint, p_notification bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO inbox_events (kind, conversation_id, message_id, notification_id)
    VALUES (p_kind, p_conversation, p_message, p_notification) RETURNING id INTO v_id;
    PERFORM pg_notify('wacrm_inbox', json_build_object('id', v_id, 'kind', p_kind, 'conversation_id', p_conversation,
                                                       'message_id', p_message,
                                                       'notification_id', p_notification)::text);
END
$$;

-- A stored message: an event; a customer's message reopens a snoozed or resolved conversation,
-- restores a deleted one (and tells the admins), and counts towards the next intelligence refresh.
CREATE FUNCTION wacrm_message_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_deleted timestamptz;
BEGIN
    IF NEW.direction = 'inbound' THEN
        SELECT deleted_at INTO v_deleted FROM conversations WHERE id = NEW.conversation_id;
        UPDATE conversations SET
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
        UPDATE conversations SET messages_since_intelligence = messages_since_intelligence + 1
        WHERE id = NEW.conversation_id;
    END IF;
    PERFORM wacrm_inbox_event('message', NEW.conversation_id, NEW.id, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_stored AFTER INSERT ON messages FOR EACH ROW EXECUTE FUNCTION wacrm_message_stored();

CREATE FUNCTION wacrm_message_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wacrm_inbox_event('status', NEW.conversation_id, NEW.id, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_status AFTER UPDATE OF status ON messages FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wacrm_message_status();

CREATE FUNCTION wacrm_conversation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wacrm_inbox_event('conversation', NEW.id, NULL, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER conversations_changed AFTER UPDATE ON conversations FOR EACH ROW
    WHEN (OLD.assigned_user_id IS DISTINCT FROM NEW.assigned_user_id
          OR OLD.needs_human IS DISTINCT FROM NEW.needs_human
          OR OLD.bot_paused IS DISTINCT FROM NEW.bot_paused
          OR OLD.inbox_status IS DISTINCT FROM NEW.inbox_status
          OR OLD.snoozed_until IS DISTINCT FROM NEW.snoozed_until
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
          OR OLD.intelligence_at IS DISTINCT FROM NEW.intelligence_at)
    EXECUTE FUNCTION wacrm_conversation_changed();

CREATE FUNCTION wacrm_notification_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wacrm_inbox_event('notification', (SELECT conversation_id FROM tasks WHERE id = NEW.task_id), NULL,
                              NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER notifications_changed AFTER INSERT OR UPDATE ON notifications FOR EACH ROW
    EXECUTE FUNCTION wacrm_notification_changed();

-- A person's reply moving through the ledger (queued, retrying, failed before Meta took it …) shows
-- in the thread before it is a message: a status event for its conversation.
CREATE FUNCTION wacrm_manual_reply_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wacrm_inbox_event('status', NEW.conversation_id, NULL, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER outbound_log_manual_insert AFTER INSERT ON outbound_log FOR EACH ROW
    WHEN (NOT NEW.automatic) EXECUTE FUNCTION wacrm_manual_reply_changed();
CREATE TRIGGER outbound_log_manual_state AFTER UPDATE OF state ON outbound_log FOR EACH ROW
    WHEN (NOT NEW.automatic AND OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION wacrm_manual_reply_changed();
