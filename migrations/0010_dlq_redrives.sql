-- Dead letters of wa.dlq already sent back to their topic by `wacrm dlq redrive`: each letter
-- (its partition and offset in wa.dlq) is redriven at most once; a second redrive skips it.
CREATE TABLE dlq_redrives (
    dlq_partition  integer     NOT NULL,
    dlq_offset     bigint      NOT NULL,
    target_topic   text        NOT NULL,
    reason         text        NOT NULL,
    redriven_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_partition, dlq_offset)
);
