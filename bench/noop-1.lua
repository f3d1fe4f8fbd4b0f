-- noop: the trivial script the commit-path benchmark compares against (one key, no work).
--
-- KEYS[1] key  any key; it only routes the call to its slot's primary
-- RETURN {OK}  always
return {'OK'}
