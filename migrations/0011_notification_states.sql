-- Read and snoozed are per person. A notification to everyone (notifications.user_id NULL: the
-- admins when a deleted conversation is restored, a handover) read or snoozed by one person stays
-- unread and visible for the others. The columns notifications.read_at and snoozed_until are kept
-- (every row is kept); what one person did is here.
CREATE TABLE notification_states (
    notification_id  bigint NOT NULL REFERENCES notifications (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    read_at          timestamptz,
    snoozed_until    timestamptz,
    PRIMARY KEY (user_id, notification_id)
);

-- A personal notification's state moves over as it was.
INSERT INTO notification_states (notification_id, user_id, read_at, snoozed_until)
SELECT id, user_id, read_at, snoozed_until FROM notifications
WHERE user_id IS NOT NULL AND (read_at IS NOT NULL OR snoozed_until IS NOT NULL);

-- The page of the person who read it (in another tab too) hears of it.
CREATE FUNCTION wacrm_notification_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wacrm_inbox_event('notification', (SELECT t.conversation_id FROM notifications n
                                               JOIN tasks t ON t.id = n.task_id WHERE n.id = NEW.notification_id),
                              NULL, NEW.notification_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER notification_states_changed AFTER INSERT OR UPDATE ON notification_states FOR EACH ROW
    EXECUTE FUNCTION wacrm_notification_state_changed();
