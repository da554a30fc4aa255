-- People who sign in to the inbox: passwords (argon2id), server-side sessions, API tokens, and the
-- sign-in attempts that rate-limit guessing. Secrets are stored only as hashes.

ALTER TABLE users
    ADD COLUMN password_hash text,
    ADD COLUMN disabled_at timestamptz;

-- A signed-in browser. id_hash = sha256 of the random id in the cookie; the CSRF token is sent back
-- in a header on unsafe requests (it is not a secret against the database, only against other sites).
CREATE TABLE sessions (
    id_hash       text PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id),
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,   -- the absolute expiry; the idle one is last_seen_at + idle
    revoked_at    timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

-- A token for scripts (Authorization: Bearer). token_hash = sha256 of the token; prefix is shown in listings.
CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id),
    token_hash    text NOT NULL UNIQUE,
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Failed sign-ins, by account (email as typed, lowercased) and by address, for the rate limit.
CREATE TABLE login_failures (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    address     text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email ON login_failures (email, at);
CREATE INDEX login_failures_address ON login_failures (address, at);
