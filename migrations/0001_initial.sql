-- wacrm initial schema. Idempotency lives in the unique keys below.

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    role        text NOT NULL DEFAULT 'agent' CHECK (role IN ('admin', 'agent')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A customer of one business number, identified by phone (wa_id) and/or business-scoped user id.
CREATE TABLE contacts (
    id               bigserial PRIMARY KEY,
    phone_number_id  text NOT NULL,
    wa_id            text,
    user_id          text,
    parent_user_id   text,
    username         text,
    profile_name     text,
    opted_out        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (wa_id IS NOT NULL OR user_id IS NOT NULL)
);
CREATE UNIQUE INDEX contacts_wa_id_key ON contacts (phone_number_id, wa_id) WHERE wa_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_user_id_key ON contacts (phone_number_id, user_id) WHERE user_id IS NOT NULL;

CREATE TABLE conversations (
    id                 bigserial PRIMARY KEY,
    conversation_key   text NOT NULL,
    phone_number_id    text NOT NULL,
    contact_id         bigint NOT NULL REFERENCES contacts (id),
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    assigned_user_id   bigint REFERENCES users (id),
    needs_human        boolean NOT NULL DEFAULT false,
    bot_paused         boolean NOT NULL DEFAULT false,
    ownership_version  integer NOT NULL DEFAULT 0,
    unread_count       integer NOT NULL DEFAULT 0,
    last_inbound_at    timestamptz,
    last_outbound_at   timestamptz,
    last_message_at    timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- At most one open conversation per business number and customer.
CREATE UNIQUE INDEX conversations_open_key ON conversations (phone_number_id, contact_id) WHERE status = 'open';
CREATE INDEX conversations_key ON conversations (conversation_key);
CREATE INDEX conversations_last_message ON conversations (last_message_at DESC);

CREATE TABLE leads (
    id           bigserial PRIMARY KEY,
    contact_id   bigint NOT NULL UNIQUE REFERENCES contacts (id),
    source       text NOT NULL DEFAULT 'organic',
    stage        text NOT NULL DEFAULT 'new',
    referral     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id                   bigserial PRIMARY KEY,
    channel              text NOT NULL DEFAULT 'whatsapp',
    provider_message_id  text NOT NULL,
    conversation_id      bigint NOT NULL REFERENCES conversations (id),
    contact_id           bigint NOT NULL REFERENCES contacts (id),
    direction            text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    type                 text NOT NULL,
    body                 text,
    payload              jsonb NOT NULL DEFAULT '{}'::jsonb,
    status               text NOT NULL,
    status_at            timestamptz,
    error                jsonb,
    provider_timestamp   timestamptz,
    raw_ref              jsonb,
    outbound_log_id      bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, provider_message_id)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

-- Every status received, once per (message, status): the audit trail and the buffer for
-- statuses that overtake the send's own response.
CREATE TABLE message_status_events (
    id                   bigserial PRIMARY KEY,
    channel              text NOT NULL DEFAULT 'whatsapp',
    provider_message_id  text NOT NULL,
    status               text NOT NULL,
    occurred_at          timestamptz NOT NULL,
    errors               jsonb,
    payload              jsonb NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, provider_message_id, status)
);

-- The send ledger: one row per send intent, claimed before the Graph API call.
CREATE TABLE outbound_log (
    id                   bigserial PRIMARY KEY,
    dedupe_key           text NOT NULL UNIQUE,
    conversation_id      bigint NOT NULL REFERENCES conversations (id),
    state                text NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'ambiguous', 'dropped')),
    intent               jsonb NOT NULL,
    attempts             integer NOT NULL DEFAULT 0,
    provider_message_id  text,
    error                jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    claimed_at           timestamptz,
    finished_at          timestamptz
);
CREATE INDEX outbound_log_state ON outbound_log (state) WHERE state IN ('queued', 'sending', 'ambiguous');

CREATE TABLE tasks (
    id               bigserial PRIMARY KEY,
    conversation_id  bigint REFERENCES conversations (id),
    kind             text NOT NULL,
    title            text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    dedupe_key       text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    user_id     bigint REFERENCES users (id),
    task_id     bigint REFERENCES tasks (id),
    kind        text NOT NULL,
    body        text NOT NULL,
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Delivery states only move forward: sent < delivered < read (played counts as read); failed is terminal.
CREATE FUNCTION wacrm_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'received' THEN 0 WHEN 'accepted' THEN 0 WHEN 'held_for_quality_assessment' THEN 0
        WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'played' THEN 3
        WHEN 'failed' THEN 4 ELSE 0 END
$$;
