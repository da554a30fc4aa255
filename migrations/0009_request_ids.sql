-- The request id of the webhook call that caused a row (issue #11): X-Request-Id of the call, or the
-- one the webhook assigned. Carried on the bus in the record header wacrm-request-id. NULL for rows
-- written before this migration and for rows no webhook call caused (a person's reply from the inbox).
ALTER TABLE messages ADD COLUMN request_id text;
ALTER TABLE outbound_log ADD COLUMN request_id text;
ALTER TABLE tasks ADD COLUMN request_id text;
-- a status webhook is a call of its own: its id is on the status events it brought
ALTER TABLE message_status_events ADD COLUMN request_id text;

-- wacrm trace REQUEST_ID looks rows up by it.
CREATE INDEX messages_request_id ON messages (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX outbound_log_request_id ON outbound_log (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX tasks_request_id ON tasks (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX message_status_events_request_id ON message_status_events (request_id) WHERE request_id IS NOT NULL;
