-- Captures, keyed by (the kiosk whose enrolled key verified it, its id): any number of
-- receivers may store the same message; one row exists.
CREATE TABLE captures (
    kiosk_id        text        NOT NULL,
    capture_id      text        NOT NULL,
    image_sha256    text        NOT NULL,
    image_format    text        NOT NULL,
    registration_id text,
    -- The capture's JSON record as the kiosk signed it (json, not jsonb: kept verbatim).
    metadata        json        NOT NULL,
    image           bytea       NOT NULL,
    stored_by       text        NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kiosk_id, capture_id)
);
-- Images are compressed already (PNG, JPEG, WSQ): out of line, without a futile pglz pass.
ALTER TABLE captures ALTER COLUMN image SET STORAGE EXTERNAL;
CREATE INDEX captures_registration ON captures (kiosk_id, registration_id)
    WHERE registration_id IS NOT NULL;

-- Messages refused for what they would do to storage, or not provably from their kiosk.
CREATE TABLE security_events (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    kiosk_id    text        NOT NULL,
    kind        text        NOT NULL,
    reason      text        NOT NULL,
    receiver    text        NOT NULL
);

-- Finished registrations for the matching service: one row per registration, ever.
-- A NOTIFY on channel registration_complete (payload: the registration id) follows each.
CREATE TABLE outbox (
    id              bigserial   PRIMARY KEY,
    kiosk_id        text        NOT NULL,
    registration_id text        NOT NULL,
    transaction     bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL,
    UNIQUE (kiosk_id, registration_id)
);
