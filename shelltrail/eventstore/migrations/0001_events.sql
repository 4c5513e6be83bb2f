-- The append-only event log. Operators query it directly: its column names are a contract.
CREATE TABLE events (
    -- Insertion order. Not commit order: never read "position > checkpoint" alone (see tx_id).
    position     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id    uuid        NOT NULL,
    stream_type  text        NOT NULL CHECK (stream_type IN ('command', 'process')),
    version      integer     NOT NULL CHECK (version > 0),
    type         text        NOT NULL,
    data         jsonb       NOT NULL,
    payload      bytea,
    recorded_at  timestamptz NOT NULL,
    -- The writing transaction. Rows whose tx_id is below the xmin of a fresh snapshot are
    -- final, so global readers order by (tx_id, position) and read only below that watermark.
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- sha256 over the previous event's hash and this event's content: tampering shows.
    hash         bytea       NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

CREATE INDEX events_global_order_idx ON events (tx_id, position);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
