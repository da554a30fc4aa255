-- The queue a team works from: conversations waiting for a person (inbox/waiting.py).
--
-- A conversation waits while it has an open task of a kind that asks a person to act; the list
-- finds those (and their oldest) through the open tasks of each conversation. Open tasks are few
-- (people close them); done ones pile up and stay out of this index.
CREATE INDEX IF NOT EXISTS tasks_open_conversation ON tasks (conversation_id, created_at) WHERE status = 'open';

-- When a task was done (by a person, or because the conversation was taken over or answered).
ALTER TABLE tasks ADD COLUMN done_at timestamptz;

CREATE FUNCTION wacrm_task_done_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.done_at := CASE WHEN NEW.status = 'done' THEN COALESCE(NEW.done_at, now()) END;
    RETURN NEW;
END
$$;
CREATE TRIGGER tasks_done_at BEFORE UPDATE OF status ON tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wacrm_task_done_at();

-- Every page hears of it: a new task may make its conversation wait (a conversation event), a task
-- done ends the wait and its notification (a conversation event, and a notification event for each
-- of its notifications, which count as read from then).
CREATE FUNCTION wacrm_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.conversation_id IS NOT NULL THEN
        PERFORM wacrm_inbox_event('conversation', NEW.conversation_id, NULL, NULL);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        PERFORM wacrm_inbox_event('notification', NEW.conversation_id, NULL, n.id)
        FROM notifications n WHERE n.task_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_created AFTER INSERT ON tasks FOR EACH ROW
    WHEN (NEW.conversation_id IS NOT NULL) EXECUTE FUNCTION wacrm_task_changed();
CREATE TRIGGER tasks_status_changed AFTER UPDATE OF status ON tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wacrm_task_changed();
