-- Templates, consent and account state (storage/templates.py).

-- The template catalogue of each WhatsApp Business Account, kept in step with Meta: replaced by
-- every full sync (inbox/catalogue.py), changed at once by the template webhooks. `parameters` is
-- what each send must fill (whatsapp/templates.py spec_of), computed from `components`.
-- (Keys are named here so that `wacrm verify-schema` knows which migration makes their indexes.)
CREATE TABLE templates (
    id                bigserial CONSTRAINT templates_pkey PRIMARY KEY,
    waba_id           text NOT NULL,
    name              text NOT NULL,
    language          text NOT NULL,
    meta_id           text,
    category          text NOT NULL,
    status            text NOT NULL,
    quality           text,
    parameter_format  text NOT NULL DEFAULT 'POSITIONAL',
    components        jsonb NOT NULL DEFAULT '[]'::jsonb,
    parameters        jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason            text,
    -- when Meta's state last changed as far as we know (a sync's start, a webhook's entry.time):
    -- a webhook older than it is stale and changes nothing
    changed_at        timestamptz NOT NULL DEFAULT now(),
    synced_at         timestamptz,
    CONSTRAINT templates_waba_id_name_language_key UNIQUE (waba_id, name, language)
);

-- One row per WABA: the last sync, the last good one, and what it found wrong.
CREATE TABLE template_syncs (
    waba_id         text CONSTRAINT template_syncs_pkey PRIMARY KEY,
    started_at      timestamptz,
    finished_at     timestamptz,
    ok              boolean,
    error           text,
    pages           integer NOT NULL DEFAULT 0,
    templates       integer NOT NULL DEFAULT 0,
    last_good_at    timestamptz,
    requested_at    timestamptz,  -- a webhook named a template the catalogue lacks: sync again soon
    window_problem  text          -- the rules file's window template missing or not approved (notified once)
);

-- Consent: the customer stopped marketing messages (user_preferences, or a send refused with 131050).
ALTER TABLE contacts ADD COLUMN marketing_opt_out boolean NOT NULL DEFAULT false;
ALTER TABLE contacts ADD COLUMN marketing_changed_at timestamptz;

-- account_update events as Meta sent them, once each, with the words admins are shown.
CREATE TABLE account_events (
    id           bigserial CONSTRAINT account_events_pkey PRIMARY KEY,
    waba_id      text NOT NULL,
    event        text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    value        jsonb NOT NULL,
    words        text NOT NULL,
    dedupe_key   text NOT NULL CONSTRAINT account_events_dedupe_key_key UNIQUE,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_events_recent ON account_events (waba_id, occurred_at DESC);

-- The restrictions in force, from the latest ACCOUNT_RESTRICTION of each WABA (until NULL: no end given).
CREATE TABLE account_restrictions (
    waba_id           text NOT NULL,
    restriction_type  text NOT NULL,
    until             timestamptz,
    event_id          bigint NOT NULL REFERENCES account_events (id),
    CONSTRAINT account_restrictions_pkey PRIMARY KEY (waba_id, restriction_type)
);
