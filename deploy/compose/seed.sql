-- Sample accounts for the compose stack's `db` connector (deploy/compose/config.yaml).
-- The postgres image runs this once, when its data directory is first created; to
-- reseed, drop the volume: `docker compose down -v`. No psql meta-commands and no
-- schema names, so the tests can load it into a schema of their own.

CREATE TABLE accounts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL,
    company       text,
    plan          text NOT NULL,
    seats         integer NOT NULL DEFAULT 1,
    mrr           numeric(12, 2) NOT NULL DEFAULT 0,
    signed_up_at  timestamptz NOT NULL,
    trial_ends_at timestamptz,
    last_seen_at  timestamptz,
    features      text[] NOT NULL DEFAULT '{}'
);
-- The proxy lower-cases emails; the queries compare lower(email) = $1 on this index.
CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));

CREATE TABLE invoices (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email     text NOT NULL,
    number    text NOT NULL UNIQUE,
    amount    numeric(12, 2) NOT NULL,
    currency  text NOT NULL DEFAULT 'usd',
    status    text NOT NULL CHECK (status IN ('paid', 'open', 'void', 'uncollectible')),
    issued_on date NOT NULL
);
CREATE INDEX invoices_email_issued_on ON invoices (lower(email), issued_on DESC);

INSERT INTO accounts
    (email, company, plan, seats, mrr, signed_up_at, trial_ends_at, last_seen_at, features)
VALUES
    ('ada@example.com', 'Analytical Engines Ltd', 'Pro', 12, 1499.50,
     '2021-03-04 09:15:00+00', NULL, '2024-06-01 08:30:00+00', '{api,sso}'),
    ('grace@example.com', 'Compiler Works Inc', 'Enterprise', 250, 12500.00,
     '2019-12-09 14:00:00+00', NULL, '2024-06-02 16:45:00+00', '{api,sso,audit_log}'),
    ('linus@example.com', 'Kernel Hackers', 'Starter', 3, 29.00,
     '2023-08-25 20:57:00+00', NULL, '2024-05-28 11:10:00+00', '{}'),
    ('margaret@example.com', 'Apollo Guidance', 'Team', 5, 0,
     '2024-05-20 10:00:00+00', '2024-06-19 10:00:00+00', '2024-06-02 09:00:00+00', '{api}');

INSERT INTO invoices (email, number, amount, currency, status, issued_on) VALUES
    ('ada@example.com', 'INV-1001', 1499.50, 'usd', 'paid', '2024-04-01'),
    ('ada@example.com', 'INV-1042', 1499.50, 'usd', 'paid', '2024-05-01'),
    ('ada@example.com', 'INV-1088', 1499.50, 'usd', 'open', '2024-06-01'),
    ('grace@example.com', 'INV-2001', 12500.00, 'usd', 'paid', '2024-05-01'),
    ('grace@example.com', 'INV-2002', 12500.00, 'usd', 'paid', '2024-06-01'),
    ('linus@example.com', 'INV-3001', 29.00, 'usd', 'uncollectible', '2024-06-01');
