-- Output reads ask for the chunks of one stream of one process around a byte offset;
-- without this index they would scan every event of the process.
CREATE INDEX events_output_idx ON events
    (stream_id, (data->>'stream'), ((data->>'offset')::bigint))
    WHERE type = 'OutputChunk';
