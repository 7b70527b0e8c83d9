-- 0006: end users carry what LiteLLM's LiteLLM_EndUserTable holds besides
-- spend (written by the LiteLLM import): a display alias, a budget in
-- micro-USD (NULL: none) and a blocked flag.

ALTER TABLE end_users
    ADD COLUMN alias      text    NOT NULL DEFAULT '',
    ADD COLUMN max_budget bigint,
    ADD COLUMN blocked    boolean NOT NULL DEFAULT false;
