-- 0009: reserved for another branch's migration (issue #16 work in
-- parallel). This placeholder keeps the numbering contiguous on the coord
-- branch; the real 0009 replaces it at merge.
SELECT 1;
