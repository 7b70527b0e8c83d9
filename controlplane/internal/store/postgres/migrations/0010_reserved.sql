-- 0010: reserved for another branch of issue #16; a no-op here so that 0011
-- loads on this branch. Drop this file when the branch owning 0010 merges.
SELECT 1;
