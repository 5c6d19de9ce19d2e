//! Unit tests of `apply`.

use super::ddl::*;

#[test]
fn ddl_commands_in_order() {
    let cmds = ddl_commands(
        "CREATE TABLE a (x int); INSERT INTO a VALUES (1); CREATE INDEX CONCURRENTLY i ON a (x); \
         CREATE TEMP TABLE t (y int); ALTER TABLE a DROP COLUMN x; CREATE ROLE r",
    );
    assert_eq!(
        cmds,
        vec![
            Some(vec!["CREATE TABLE a (x int)".to_owned()]),
            Some(vec!["CREATE INDEX i ON a (x)".to_owned()]),
            None,
            Some(vec!["ALTER TABLE a DROP COLUMN x".to_owned()]),
        ]
    );
    assert_eq!(
        ddl_commands("CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY, v text DEFAULT CAST(1 AS text))"),
        vec![Some(vec![
            "CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY, v text DEFAULT CAST(1 AS text))".to_owned()
        ])]
    );
    assert_eq!(
        ddl_commands("CREATE TABLE b AS SELECT * FROM a"),
        vec![Some(vec![
            "CREATE TABLE b AS SELECT * FROM a WITH NO DATA".to_owned()
        ])]
    );
    assert_eq!(
        ddl_commands("SELECT * INTO public.c FROM a"),
        vec![Some(vec![
            "SELECT * INTO public.c FROM a".to_owned(),
            "TRUNCATE public.c".to_owned()
        ])]
    );
    assert_eq!(ddl_commands("SELECT * INTO TEMP e FROM a"), vec![None]);
    assert_eq!(ddl_commands("GRANT SELECT ON a TO app").len(), 1);
    assert!(ddl_commands("GRANT r TO app").is_empty());
    assert!(ddl_commands("DO $$ BEGIN CREATE TABLE z (i int); END $$").is_empty());
    assert_eq!(ddl_commands("REFRESH MATERIALIZED VIEW m").len(), 1);
}
