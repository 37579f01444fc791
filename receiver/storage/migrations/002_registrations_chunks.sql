-- Registration state and chunked transfers in tables, so that receivers keep nothing of
-- their own: any receiver of the share group may take any part of any registration or any
-- chunk of any transfer (docs/central-store.md describes the tables and how to query them).

-- One row per registration manifest a kiosk sent, under the kiosk whose key verified it.
CREATE TABLE registrations (
    kiosk_id        text        NOT NULL,
    registration_id text        NOT NULL,
    -- The manifest as received (json: kept verbatim) and its SHA-256 (a resend with other
    -- content is a conflict, never stored over it).
    manifest        json        NOT NULL,
    manifest_sha256 text        NOT NULL,
    -- waiting: parts missing (registration_missing lists them); complete: the transaction
    -- is in outbox; cancelled: at the kiosk; failed: every part here, building it failed.
    state           text        NOT NULL
                    CHECK (state IN ('waiting', 'complete', 'cancelled', 'failed')),
    -- failed: the reason code (storage, encoding, bad-data, internal), the error (central
    -- only: it may quote a name), the attempts so far and when the next one is due.
    failure_code    text,
    failure         text,
    attempts        integer     NOT NULL DEFAULT 0,
    retry_at        timestamptz,
    -- The status document last issued to the kiosk (receiver/status.py) and its seq; for an
    -- incomplete registration it says which parts were missing then.
    status          json,
    status_seq      bigint      NOT NULL DEFAULT 0,
    -- complete: name, sha256 and bytes of each file built (the .an2 in outbox, the rest in
    -- registration_files).
    files           json,
    received_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    received_by     text        NOT NULL,
    completed_by    text,
    PRIMARY KEY (kiosk_id, registration_id)
);
-- What the per-kiosk cap on unfinished registrations counts, and the "incomplete" sweep.
CREATE INDEX registrations_open ON registrations (kiosk_id) WHERE state IN ('waiting', 'failed');
CREATE INDEX registrations_waiting_since ON registrations (received_at) WHERE state = 'waiting';

-- The captures each manifest lists (at most 64: receiver/assembly.py).
CREATE TABLE registration_parts (
    kiosk_id        text        NOT NULL,
    registration_id text        NOT NULL,
    capture_id      text        NOT NULL,
    item            text,
    modality        text,
    position        smallint,
    PRIMARY KEY (kiosk_id, registration_id, capture_id),
    FOREIGN KEY (kiosk_id, registration_id) REFERENCES registrations ON DELETE CASCADE
);
CREATE INDEX registration_parts_capture ON registration_parts (kiosk_id, capture_id);

-- The ISO/IEC 19794 records built beside the transaction (.fir, .fac, .iir).
CREATE TABLE registration_files (
    kiosk_id        text        NOT NULL,
    registration_id text        NOT NULL,
    name            text        NOT NULL,
    sha256          text        NOT NULL,
    data            bytea       NOT NULL,
    PRIMARY KEY (kiosk_id, registration_id, name),
    FOREIGN KEY (kiosk_id, registration_id) REFERENCES registrations ON DELETE CASCADE
);
ALTER TABLE registration_files ALTER COLUMN data SET STORAGE EXTERNAL;

-- Parts a waiting registration still lacks, live: its listed captures with no captures row.
CREATE VIEW registration_missing AS
    SELECT p.kiosk_id, p.registration_id, p.capture_id, p.item, p.position, r.received_at
      FROM registration_parts p
      JOIN registrations r USING (kiosk_id, registration_id)
     WHERE r.state = 'waiting'
       AND NOT EXISTS (SELECT 1 FROM captures c
                        WHERE c.kiosk_id = p.kiosk_id AND c.capture_id = p.capture_id);

-- Chunked transfers being reassembled: the signed manifest as received, how many chunks
-- are held, the bytes charged to the kiosk's quota (the whole transfer, from its manifest
-- on) and, once the item is stored, its receipt (sent again to a kiosk that missed it).
CREATE TABLE chunk_transfers (
    kiosk_id        text        NOT NULL,
    item_id         text        NOT NULL,
    sha256          text        NOT NULL,
    manifest        bytea       NOT NULL,
    size            bigint      NOT NULL,
    chunk_size      integer     NOT NULL,
    count           integer     NOT NULL,
    held            integer     NOT NULL DEFAULT 0,
    charged         bigint      NOT NULL,
    receipt         bytea,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    started_by      text        NOT NULL,
    PRIMARY KEY (kiosk_id, item_id, sha256),
    CHECK (0 <= held AND held <= count)
);
CREATE INDEX chunk_transfers_open ON chunk_transfers (kiosk_id) WHERE done_at IS NULL;
CREATE INDEX chunk_transfers_age ON chunk_transfers (updated_at);

-- One row per verified chunk; deleted once its transfer is stored.
CREATE TABLE chunk_parts (
    kiosk_id        text        NOT NULL,
    item_id         text        NOT NULL,
    sha256          text        NOT NULL,
    index           integer     NOT NULL,
    data            bytea       NOT NULL,
    stored_by       text        NOT NULL,
    PRIMARY KEY (kiosk_id, item_id, sha256, index),
    FOREIGN KEY (kiosk_id, item_id, sha256) REFERENCES chunk_transfers ON DELETE CASCADE
);
ALTER TABLE chunk_parts ALTER COLUMN data SET STORAGE EXTERNAL;
