-- The sample accounts and invoices, the one copy of them: `aggregator demo` runs it in the
-- schema aggregator_demo (aggregator/samples/database.py sets search_path first), and the
-- compose stack's postgres runs it once in a fresh database (docker-compose.yml mounts it
-- into /docker-entrypoint-initdb.d). Hence no schema names and no psql meta-commands, and
-- every statement may run again: tables and indexes only when missing, rows upserted.

CREATE TABLE IF NOT EXISTS accounts (
    email         text PRIMARY KEY,
    company       text,
    plan          text NOT NULL,
    seats         integer NOT NULL DEFAULT 1,
    mrr           numeric(12, 2) NOT NULL DEFAULT 0,
    signed_up_at  timestamptz NOT NULL,
    trial_ends_at timestamptz,
    last_seen_at  timestamptz,
    features      text[] NOT NULL DEFAULT '{}'
);
-- The proxy lower-cases emails; the queries compare lower(email) = $1 on these indexes.
CREATE INDEX IF NOT EXISTS accounts_lower_email ON accounts (lower(email));

CREATE TABLE IF NOT EXISTS invoices (
    number    text PRIMARY KEY,
    email     text NOT NULL,
    amount    numeric(12, 2) NOT NULL,
    status    text NOT NULL CHECK (status IN ('paid', 'open', 'void', 'uncollectible')),
    issued_on date NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_lower_email_issued_on
    ON invoices (lower(email), issued_on DESC);

-- ada@, grace@ and alan@ are known to every sample upstream; margaret@ only to this one.
INSERT INTO accounts
    (email, company, plan, seats, mrr, signed_up_at, trial_ends_at, last_seen_at, features)
VALUES
    ('ada@example.com', 'Analytical Engines Ltd', 'Pro', 12, 1499.50,
     '2021-03-04 09:15:00+00', NULL, '2024-06-01 08:30:00+00', '{api,sso}'),
    ('grace@example.com', 'Compiler Works Inc', 'Enterprise', 250, 12500.00,
     '2019-12-09 14:00:00+00', NULL, '2024-06-02 16:45:00+00', '{api,sso,audit_log}'),
    ('alan@example.com', 'Bletchley Computing', 'Starter', 3, 29.00,
     '2023-08-25 20:57:00+00', '2023-09-08 20:57:00+00', '2024-05-28 11:10:00+00', '{}'),
    ('margaret@example.com', 'Apollo Guidance', 'Team', 5, 0,
     '2024-05-20 10:00:00+00', '2024-06-19 10:00:00+00', '2024-06-02 09:00:00+00', '{api}')
ON CONFLICT (email) DO UPDATE SET
    company = EXCLUDED.company, plan = EXCLUDED.plan, seats = EXCLUDED.seats,
    mrr = EXCLUDED.mrr, signed_up_at = EXCLUDED.signed_up_at,
    trial_ends_at = EXCLUDED.trial_ends_at, last_seen_at = EXCLUDED.last_seen_at,
    features = EXCLUDED.features;

INSERT INTO invoices (number, email, amount, status, issued_on) VALUES
    ('INV-1001', 'ada@example.com', 1499.50, 'paid', '2024-04-01'),
    ('INV-1042', 'ada@example.com', 1499.50, 'paid', '2024-05-01'),
    ('INV-1088', 'ada@example.com', 1499.50, 'open', '2024-06-01'),
    ('INV-2001', 'grace@example.com', 12500.00, 'paid', '2024-05-01'),
    ('INV-2002', 'grace@example.com', 12500.00, 'paid', '2024-06-01'),
    ('INV-3001', 'alan@example.com', 29.00, 'uncollectible', '2024-06-01')
ON CONFLICT (number) DO UPDATE SET
    email = EXCLUDED.email, amount = EXCLUDED.amount, status = EXCLUDED.status,
    issued_on = EXCLUDED.issued_on;
