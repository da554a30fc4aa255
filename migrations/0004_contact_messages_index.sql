-- "Has this customer written before?" (the reply engines' new_contact) and contact merges look
-- messages up by contact; without this index each lookup scans every message.
CREATE INDEX messages_contact ON messages (contact_id, id);
