-- schema-cluster.sql - the tables a fleet of mxkeepd nodes shares
-- (cluster = { node; pgsql; } in mxkeep.conf; doc/scaling.md).
--
-- mxkeepd creates them itself when they are missing (CREATE TABLE IF NOT
-- EXISTS, under an advisory lock so nodes starting together do not race),
-- in the database of the pgsql entry that cluster.pgsql names: the same
-- database as the default schema (doc/schema.sql).  This file is the same
-- DDL for an administrator who creates them beforehand or grants rights:
-- the mxkeep role needs SELECT, INSERT, UPDATE, DELETE on all four.

-- A domain held on one node is held on every node (mxkeepctl hold D;
-- NOTIFY mxkeep_hold).  release D keeps the row with held = false, so the
-- table also says who released what and when.  Domains from the config
-- file and from the database alike.
CREATE TABLE IF NOT EXISTS holds (
    domain      text PRIMARY KEY,           -- lower case, no trailing dot
    held        boolean NOT NULL DEFAULT true,
    source      text NOT NULL DEFAULT 'mxkeepctl',
    held_by     text,                       -- the node that changed it
    held_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per node: its heartbeat.  A node with no update for
-- stale_intervals (default 3) times its status_interval is stale.
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node            text PRIMARY KEY,
    status_interval integer NOT NULL,       -- seconds
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Each node's backlog per destination, replaced every status_interval in
-- one statement (so one node's rows are always one consistent snapshot).
CREATE TABLE IF NOT EXISTS node_status (
    node        text NOT NULL,
    domain      text NOT NULL,
    messages    bigint NOT NULL,            -- messages with a pending recipient
    bytes       bigint NOT NULL,            -- their body octets
    oldest      timestamptz,                -- arrival of the oldest, NULL: none
    state       text NOT NULL,              -- unknown | up | down | held
    last_error  text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, domain)
);

-- Callout answers shared by the fleet: a probe on one node answers for
-- all (verify.h, struct verify_shared).  address is the cache key
-- ('local@domain', or '@domain' for a catch-all primary).
CREATE TABLE IF NOT EXISTS verify_cache (
    address     text PRIMARY KEY,
    result      text NOT NULL,              -- valid | invalid
    reply       text NOT NULL DEFAULT '',   -- the primary's 5xx line (invalid)
    learned_at  timestamptz NOT NULL DEFAULT now(),
    learned_by  text
);
