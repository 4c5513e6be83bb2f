-- Projections: current state derived from the events, updated in the appending transaction.
-- `shelltrail replay` rebuilds all of them from the events table alone.
CREATE TABLE commands (
    id                  uuid PRIMARY KEY,
    name                text        NOT NULL,
    description         text,
    script              text        NOT NULL,
    version             integer     NOT NULL,
    timeout_seconds     double precision,
    env                 jsonb       NOT NULL,
    max_output_bytes    bigint,
    output_limit_policy text        NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    stream_version      integer     NOT NULL,
    deleted             boolean     NOT NULL
);

CREATE INDEX commands_listing_idx ON commands (created_at DESC, id DESC) WHERE NOT deleted;

CREATE TABLE command_versions (
    command_id          uuid        NOT NULL,
    version             integer     NOT NULL,
    name                text        NOT NULL,
    description         text,
    script              text        NOT NULL,
    timeout_seconds     double precision,
    env                 jsonb       NOT NULL,
    max_output_bytes    bigint,
    output_limit_policy text        NOT NULL,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (command_id, version)
);

CREATE TABLE processes (
    id                  uuid PRIMARY KEY,
    command_id          uuid        NOT NULL,
    command_version     integer     NOT NULL,
    status              text        NOT NULL,
    args                jsonb       NOT NULL,
    env_names           jsonb       NOT NULL,
    timeout_seconds     double precision,
    requested_by        text,
    idempotency_key     text,
    created_at          timestamptz NOT NULL,
    version             integer     NOT NULL,
    pid                 integer,
    pgid                integer,
    node                text,
    started_at          timestamptz,
    finished_at         timestamptz,
    exit_code           integer,
    signal              integer,
    stop_reason         text,
    stop_requested_at   timestamptz,
    stdout_bytes        bigint      NOT NULL,
    stderr_bytes        bigint      NOT NULL,
    dropped_bytes       bigint      NOT NULL,
    cpu_user_seconds    double precision,
    cpu_system_seconds  double precision,
    max_rss_kib         bigint,
    deleted             boolean     NOT NULL
);

CREATE INDEX processes_listing_idx ON processes (created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX processes_command_idx ON processes (command_id, created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX processes_status_idx ON processes (status, created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX processes_unfinished_idx ON processes (node) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX processes_idempotency_key_idx ON processes (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
