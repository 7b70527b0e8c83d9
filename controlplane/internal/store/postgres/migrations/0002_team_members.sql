-- 0002: team_members, so that "teams of a user" and "users of a team" are
-- index lookups instead of scans of every team document. Backfilled from the
-- members already stored in teams.doc.

CREATE TABLE team_members (
    team_id text NOT NULL,
    user_id text NOT NULL,
    role    text NOT NULL,
    CONSTRAINT team_members_pkey PRIMARY KEY (team_id, user_id),
    CONSTRAINT team_members_team_id_fkey FOREIGN KEY (team_id) REFERENCES teams (team_id) ON DELETE CASCADE
);
CREATE INDEX team_members_user_idx ON team_members (user_id);

INSERT INTO team_members (team_id, user_id, role)
SELECT t.team_id, m ->> 'user_id', coalesce(m ->> 'role', '')
FROM teams AS t,
     jsonb_array_elements(
         CASE WHEN jsonb_typeof(t.doc -> 'members') = 'array' THEN t.doc -> 'members' ELSE '[]'::jsonb END
     ) AS m
WHERE coalesce(m ->> 'user_id', '') <> ''
ON CONFLICT DO NOTHING;
