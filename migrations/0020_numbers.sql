-- Business numbers: one deployment serves many, each with its own access token (storage/numbers.py).
--
-- A row per phone_number_id. The access token is kept only encrypted (Fernet, TOKEN_ENCRYPTION_KEY);
-- a row without one is the environment's number, whose token is WHATSAPP_ACCESS_TOKEN (never stored).
-- token_version counts the tokens a row has had: a 401 pauses the number only if the token it
-- rejected is still the current one, so a token that arrived meanwhile is never paused by mistake.
-- state: active; token_rejected (Meta refused the token: its sends wait for a new one); disabled.
CREATE TABLE business_numbers (
    phone_number_id       text CONSTRAINT business_numbers_pkey PRIMARY KEY,  -- named: wacrm verify-schema points here
    waba_id               text,
    label                 text,
    display_phone_number  text,
    token_ciphertext      text,
    token_version         integer NOT NULL DEFAULT 1,
    rate_limit_per_s      double precision CHECK (rate_limit_per_s > 0),
    coexistence           boolean NOT NULL DEFAULT false,
    state                 text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'token_rejected', 'disabled')),
    state_reason          text,
    state_at              timestamptz NOT NULL DEFAULT now(),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The conversation list filtered by number (GET conversations?number=), in the list's order.
CREATE INDEX IF NOT EXISTS conversations_inbox_number_recent
    ON conversations (phone_number_id, last_message_at DESC NULLS LAST, id DESC) WHERE deleted_at IS NULL;
