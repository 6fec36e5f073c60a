-- doc/schema.sql - mxkeep's default PostgreSQL schema (issue 8).
--
-- Used when a `pgsql` entry names no recipient_query / domain_query:
--   recipients = "pgsql:main";   -- per domain: look addresses up in `recipients`
--   domains_from = "pgsql:main"; -- serve every row of `domains` too
-- Load it once:  psql -d mxkeep -f doc/schema.sql   (safe to run again)
--
-- mxkeep reads with SELECT only, and LISTENs on mxkeep_domains; grant it
-- no more than that:
--   CREATE ROLE mxkeep LOGIN;  GRANT SELECT ON domains, recipients TO mxkeep;

-- One row per served domain.  Only name is required; a NULL column takes
-- the default of the config file's domain settings.  A domain also listed
-- in the config file keeps the file's settings (mxkeep logs it).
CREATE TABLE IF NOT EXISTS domains (
    name          text PRIMARY KEY
                  CHECK (name = lower(name) AND name !~ '\.$'),
    primary_route text,     -- "[host]:port", "[host]", "domain", "domain:port"; NULL: MX of name
    retention     text,     -- "7d", "36h", ...: like the file's retention
    recipients    text,     -- "pgsql:main", "/abs/list", "lmdb:/abs/map"; NULL: any local part
    verify        text CHECK (verify IN ('off', 'callout')),
    unverified    text CHECK (unverified IN ('accept', 'tempfail')),
    accept        text CHECK (accept IN ('always', 'when-primary-down')),
    tls           text CHECK (tls IN ('none', 'may', 'encrypt', 'verify')),
    hold          boolean
);

-- Valid recipients: 'local@domain' for one address, '@domain' for every
-- local part of the domain.  Lower case: mxkeep folds what it looks up.
CREATE TABLE IF NOT EXISTS recipients (
    address text PRIMARY KEY CHECK (address = lower(address) AND address LIKE '%@%')
);

-- Every change to `domains` wakes mxkeep (LISTEN mxkeep_domains): a
-- domain added with one INSERT is served within a second.  One NOTIFY per
-- statement, and PostgreSQL folds repeats within a transaction.
CREATE OR REPLACE FUNCTION mxkeep_domains_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mxkeep_domains', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS mxkeep_domains_changed ON domains;
CREATE TRIGGER mxkeep_domains_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON domains
    FOR EACH STATEMENT EXECUTE FUNCTION mxkeep_domains_notify();
