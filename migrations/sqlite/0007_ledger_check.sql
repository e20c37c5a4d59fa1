-- A keyed check value of the pseudonym key the erasure ledger is written with
-- (HMAC(key, "ledger-check:v1")): an erasure or a restore with another key is
-- refused before it writes anything. One row at most.
CREATE TABLE erasure_ledger_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    check_value TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);
