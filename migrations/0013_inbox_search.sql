-- The inbox list's search (`q`: a fragment of the contact's name, phone or user id, matched
-- anywhere: ILIKE/LIKE '%…%'), by trigram indexes instead of a scan of every contact joined to
-- its conversation (about 170 ms a search at 100,000 contacts, `python -m bench --only inbox`).
-- pg_trgm ships with PostgreSQL (contrib) and is a trusted extension: the database's owner may
-- create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS contacts_profile_name_trgm ON contacts USING gin (profile_name gin_trgm_ops);
CREATE INDEX IF NOT EXISTS contacts_wa_id_trgm ON contacts USING gin (wa_id gin_trgm_ops);
CREATE INDEX IF NOT EXISTS contacts_user_id_trgm ON contacts USING gin (user_id gin_trgm_ops);
