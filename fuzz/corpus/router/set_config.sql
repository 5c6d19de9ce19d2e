SELECT set_config('search_path', 's1, public', false), pg_catalog.set_config('a.b', $$x$$, FALSE) AS c; SELECT set_config($1, 'v', true) FROM t WHERE set_config('k', 'v', false) = ''
