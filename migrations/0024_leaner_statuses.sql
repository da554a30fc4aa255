-- Cheaper statuses (issue #22): the status agent records and applies a batch of statuses in one
-- statement (storage/statuses.py). A status event no longer stores Meta's whole status object: no
-- query reads it, and the raw body it came in stays on wa.webhook.raw. The column stays (nullable),
-- so a worker of the previous version, which still writes it, works during a rolling upgrade.
ALTER TABLE message_status_events ALTER COLUMN payload DROP NOT NULL;
