-- The inbox list's search finds a customer's words too (`q` matched anywhere in a message's text,
-- from 3 characters: what a trigram can find), by a trigram index instead of a scan of every message.
-- pg_trgm was created by 0013_inbox_search.sql.
CREATE INDEX IF NOT EXISTS messages_body_trgm ON messages USING gin (body gin_trgm_ops);
-- A contact's conversations, for the search's matches by name or phone (the open-key index covers
-- only open conversations and leads with phone_number_id).
CREATE INDEX IF NOT EXISTS conversations_contact ON conversations (contact_id);
