-- Files to delete from the application's object stores: written before the
-- rows referencing them change, removed once deleted; `not_before` defers a
-- file that Object Lock keeps until its retain-until date.
CREATE TABLE pending_object_deletes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT    NOT NULL,
    store_name  TEXT    NOT NULL,
    table_name  TEXT    NOT NULL,
    column_name TEXT    NOT NULL,
    object_key  TEXT    NOT NULL,
    class       TEXT    NOT NULL,
    org         TEXT    NOT NULL,
    not_before  TEXT,
    created_at  TEXT    NOT NULL
);
CREATE INDEX pending_object_deletes_origin ON pending_object_deletes (origin, id);
