-- A minimal application schema for the compose stack, matching lethe.toml's data map.
CREATE TABLE orgs (id serial PRIMARY KEY, name text NOT NULL, closed_at timestamptz);
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
CREATE TABLE memberships (org_id int REFERENCES orgs, user_id int REFERENCES users, role text NOT NULL);
CREATE TABLE api_request_logs (id bigserial PRIMARY KEY, org_id int, user_id int, path text, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON api_request_logs (created_at);
CREATE INDEX ON api_request_logs (user_id);
