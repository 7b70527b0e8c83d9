-- 0009: money moves from micro-USD to nano-USD (1e-9 USD), so that per-token
-- prices of cheap models are billed exactly. Every stored amount is
-- multiplied by 1000: spend, budgets and per-model spend and budgets in the
-- key, team, user and organization documents (and the team members'
-- budgets and spend), end users' spend and budget, spend log and SaaS job
-- call costs, and the same fields in the change log's documents (served as
-- deltas). Prices stay pico-USD per token; credits are counts; the audit log
-- and events hold USD already. Amounts saturate at the bigint bounds.

CREATE FUNCTION pg_temp.nano(v numeric) RETURNS numeric LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT least(greatest(v * 1000, -9223372036854775808), 9223372036854775807)
$$;

CREATE FUNCTION pg_temp.nano(v jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN to_jsonb(pg_temp.nano((v::text)::numeric)) ELSE v END
$$;

-- nano_doc scales the money fields of a key, team, user, organization or
-- end user document.
CREATE FUNCTION pg_temp.nano_doc(d jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    f text;
    o jsonb;
    k text;
BEGIN
    IF d IS NULL OR jsonb_typeof(d) <> 'object' THEN
        RETURN d;
    END IF;
    FOREACH f IN ARRAY ARRAY['max_budget', 'soft_budget', 'spend', 'team_member_budget'] LOOP
        IF d ? f THEN
            d := jsonb_set(d, ARRAY[f], pg_temp.nano(d -> f));
        END IF;
    END LOOP;
    IF jsonb_typeof(d -> 'model_spend') = 'object' THEN
        o := '{}'::jsonb;
        FOR k IN SELECT jsonb_object_keys(d -> 'model_spend') LOOP
            o := o || jsonb_build_object(k, pg_temp.nano(d -> 'model_spend' -> k));
        END LOOP;
        d := jsonb_set(d, '{model_spend}', o);
    END IF;
    IF jsonb_typeof(d -> 'model_max_budget') = 'object' THEN
        o := '{}'::jsonb;
        FOR k IN SELECT jsonb_object_keys(d -> 'model_max_budget') LOOP
            IF jsonb_typeof(d -> 'model_max_budget' -> k) = 'object' AND d -> 'model_max_budget' -> k ? 'budget_limit' THEN
                o := o || jsonb_build_object(k, jsonb_set(d -> 'model_max_budget' -> k, '{budget_limit}',
                    pg_temp.nano(d -> 'model_max_budget' -> k -> 'budget_limit')));
            ELSE
                o := o || jsonb_build_object(k, d -> 'model_max_budget' -> k);
            END IF;
        END LOOP;
        d := jsonb_set(d, '{model_max_budget}', o);
    END IF;
    IF jsonb_typeof(d -> 'members') = 'array' THEN
        SELECT coalesce(jsonb_agg(
                   CASE WHEN jsonb_typeof(m) <> 'object' THEN m
                   ELSE m
                       || CASE WHEN m ? 'max_budget_in_team' THEN jsonb_build_object('max_budget_in_team', pg_temp.nano(m -> 'max_budget_in_team')) ELSE '{}'::jsonb END
                       || CASE WHEN m ? 'spend' THEN jsonb_build_object('spend', pg_temp.nano(m -> 'spend')) ELSE '{}'::jsonb END
                   END ORDER BY i), '[]'::jsonb)
        INTO o
        FROM jsonb_array_elements(d -> 'members') WITH ORDINALITY AS e(m, i);
        d := jsonb_set(d, '{members}', o);
    END IF;
    RETURN d;
END
$$;

UPDATE keys SET doc = pg_temp.nano_doc(doc);
UPDATE teams SET doc = pg_temp.nano_doc(doc);
UPDATE users SET doc = pg_temp.nano_doc(doc);
UPDATE organizations SET doc = pg_temp.nano_doc(doc);
UPDATE end_users SET spend = pg_temp.nano(spend)::bigint, max_budget = pg_temp.nano(max_budget)::bigint;
UPDATE changes SET data = pg_temp.nano_doc(data)
WHERE data IS NOT NULL AND kind IN ('key', 'team', 'user', 'organization', 'end_user');
UPDATE spend_logs SET cost = pg_temp.nano(cost)::bigint;
UPDATE job_calls SET doc = jsonb_set(doc, '{cost}', pg_temp.nano(doc -> 'cost')) WHERE doc ? 'cost';
