-- The typed content of a message (whatsapp.model), what it refers to, the ad it came from;
-- and the numbers a contact used before (system "user_changed_number").
ALTER TABLE messages
    ADD COLUMN content jsonb,
    ADD COLUMN context jsonb,
    ADD COLUMN referral jsonb;
CREATE INDEX messages_context_id ON messages ((context->>'message_id')) WHERE context IS NOT NULL;

ALTER TABLE contacts ADD COLUMN previous_wa_ids text[] NOT NULL DEFAULT '{}';
ALTER TABLE leads ADD COLUMN first_message_id text;
