//! Two-phase commit across shards (`pgfleet::shard::twophase`) against real primaries with
//! `max_prepared_transactions` set: a commit applies on every shard or on none; a pgfleet "killed" after any
//! step of the protocol (its connections dropped without a goodbye) or a shard primary killed with -9
//! leaves nothing prepared and an all-or-nothing outcome once recovery has run; recovery leaves alone what
//! is still being decided; the start check names a primary that cannot prepare.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use pgfleet::config::{NodeConfig, NodeTlsMode, Role};
use pgfleet::shard::ShardId;
use pgfleet::shard::twophase::commit::{commit_prepared, decide, prepare, start};
use pgfleet::shard::twophase::{
    CommitOutcome, CommitStep, InstanceId, ParticipantError, Recovery, RecoveryError, RecoveryLogin,
    RecoveryOptions, RecoveryReport, ShardTarget, StartCheckError, TwoPhaseError, WaitReason,
    check_prepared_transactions, commit, recover_once, rollback, spawn_recovery,
};
use tokio_postgres::Client;

use crate::support::cluster::{
    APP_DB, APP_USER, ClusterOptions, LocalCluster, PASSWORD, cluster_with_async, options,
};
use crate::support::proxy::connect;
use crate::support::wait_until;

const TWO_PHASE: &str = "max_prepared_transactions = 20";
const NO_TWO_PHASE: &str = "max_prepared_transactions = 0";

/// Shard primaries on real servers; `layout[shard]` is the server a shard lives on (two shards may share
/// one, which gives a third participant without a third server).
struct Fleet {
    servers: Vec<LocalCluster>,
    layout: Vec<usize>,
    targets: Vec<ShardTarget>,
    admins: Vec<Client>,
}

async fn server(two_phase: bool) -> LocalCluster {
    cluster_with_async(ClusterOptions {
        replicas: 0,
        // The harness's template allows a few prepared transactions; a later line overrides it.
        extra_conf: vec![if two_phase { TWO_PHASE } else { NO_TWO_PHASE }.to_owned()],
        ..options()
    })
    .await
}

fn node_config(name: &str, address: String, shard: u32) -> NodeConfig {
    NodeConfig {
        name: name.to_owned(),
        address,
        role: Role::Primary,
        weight: 1,
        tls: NodeTlsMode::Disable,
        tls_ca: None,
        shard: Some(shard),
    }
}

async fn fleet(layout: &[usize], two_phase: bool) -> Fleet {
    let count = layout.iter().max().map_or(0, |m| m + 1);
    let servers = join_all((0..count).map(|_| server(two_phase))).await;
    let targets = layout
        .iter()
        .enumerate()
        .map(|(shard, &s)| {
            let node = node_config(&format!("s{shard}"), servers[s].primary.address(), shard as u32);
            ShardTarget::new(ShardId::new(shard as u32), shard, &node).expect("shard target")
        })
        .collect();
    let mut admins = Vec::new();
    for s in &servers {
        let admin = connect(&s.primary.dsn("postgres", PASSWORD, APP_DB)).await;
        let app = connect(&s.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
        app.batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, shard int NOT NULL); \
             CREATE TABLE uniq (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .expect("tables");
        admins.push(admin);
    }
    Fleet {
        servers,
        layout: layout.to_vec(),
        targets,
        admins,
    }
}

fn login(user: &str) -> RecoveryLogin {
    RecoveryLogin {
        user: user.to_owned(),
        password: PASSWORD.to_owned(),
        database: APP_DB.to_owned(),
        timeout: Duration::from_secs(10),
    }
}

fn recovery_options(keep: Duration) -> RecoveryOptions {
    RecoveryOptions {
        writers: vec![APP_USER.to_owned()],
        keep_decisions: keep,
    }
}

fn instance() -> InstanceId {
    InstanceId::new("it_twophase").expect("instance id")
}

fn shard(n: u32) -> ShardId {
    ShardId::new(n)
}

/// One shard's connection inside an open transaction, as a session holds it.
struct Part {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    pid: i32,
    server: usize,
}

impl Fleet {
    /// Opens a transaction on `shard` that inserts account `id`, as the app's role.
    async fn open(&self, shard: u32, id: i32) -> Part {
        self.open_as(APP_USER, shard, id).await
    }

    /// [`Fleet::open`] as `user`.
    async fn open_as(&self, user: &str, shard: u32, id: i32) -> Part {
        let server = self.layout[shard as usize];
        let dsn = self.servers[server].primary.dsn(user, PASSWORD, APP_DB);
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("participant connection");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(&format!("BEGIN; INSERT INTO accounts VALUES ({id}, {shard})"))
            .await
            .expect("participant's write");
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        Part {
            client,
            task,
            pid,
            server,
        }
    }

    /// What a kill -9 of pgfleet does to its node connections: the sockets close with no Terminate. Returns
    /// once the servers have ended those backends (and so rolled back whatever they held open).
    async fn crash(&self, parts: Vec<Part>) {
        let mut gone = Vec::new();
        for part in parts {
            part.task.abort();
            let _ = part.task.await;
            drop(part.client);
            gone.push((part.server, part.pid));
        }
        for (server, pid) in gone {
            let admin = &self.admins[server];
            let ended = wait_until(Duration::from_secs(10), async || {
                admin
                    .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .await
                    .expect("pg_stat_activity")
                    .get::<_, i64>(0)
                    == 0
            })
            .await;
            assert!(
                ended.is_some(),
                "backend {pid} still there 10 s after its client vanished"
            );
        }
    }

    /// Account ids on a server.
    async fn ids(&self, server: usize) -> Vec<i32> {
        self.admins[server]
            .query("SELECT id FROM accounts ORDER BY id", &[])
            .await
            .expect("accounts")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every prepared transaction on every server.
    async fn prepared(&self) -> Vec<String> {
        let mut all = Vec::new();
        for admin in &self.admins {
            for row in admin
                .query("SELECT gid FROM pg_prepared_xacts", &[])
                .await
                .expect("pg_prepared_xacts")
            {
                all.push(row.get(0));
            }
        }
        all
    }

    async fn decisions(&self, server: usize) -> Vec<String> {
        self.admins[server]
            .query("SELECT gid_base FROM pgfleet.commit_decisions ORDER BY 1", &[])
            .await
            .expect("decisions")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn recover(&self, keep: Duration) -> RecoveryReport {
        let report = recover_once(&self.targets, &login(APP_USER), &recovery_options(keep))
            .await
            .expect("recovery");
        assert_eq!(report.failures, Vec::new(), "recovery failures");
        report
    }

    /// Reconnects the admin connection of a restarted server.
    async fn reconnect(&mut self, server: usize) {
        self.admins[server] = connect(&self.servers[server].primary.dsn("postgres", PASSWORD, APP_DB)).await;
    }
}

const KEEP: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_across_shards_applies_on_every_shard_and_a_refusal_on_none() {
    let fleet = fleet(&[0, 1], true).await;
    check_prepared_transactions(&fleet.targets, &login(APP_USER))
        .await
        .expect("both primaries allow prepared transactions");

    // Before recovery ever ran, the decision table is missing: refused with the way out, nothing applied.
    let (mut a, mut b) = (fleet.open(0, 1).await, fleet.open(1, 101).await);
    let e = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect_err("no decision table");
    assert!(matches!(e, TwoPhaseError::DecisionTable { .. }), "{e:?}");
    assert_eq!(e.sqlstate(), "42P01");
    assert!(
        e.hint()
            .expect("hint")
            .contains("creates pgfleet.commit_decisions")
    );
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![], vec![]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());

    let first = fleet.recover(KEEP).await;
    assert!(first.is_quiet(), "{first:?}");

    // Committed on both. The coordinator is the lowest shard whatever the order given.
    let (mut a, mut b) = (fleet.open(0, 1).await, fleet.open(1, 101).await);
    let outcome = commit(
        &instance(),
        &mut [(shard(1), &mut b.client), (shard(0), &mut a.client)],
    )
    .await
    .expect("commit");
    let CommitOutcome::Committed {
        gid: Some(gid),
        unfinished,
    } = outcome
    else {
        panic!("not a two-phase commit: {outcome:?}");
    };
    assert_eq!(unfinished, Vec::new());
    assert_eq!(gid.coordinator, shard(0));
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![1], vec![101]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());
    assert_eq!(fleet.decisions(0).await, vec![gid.to_string()]);

    // Decision rows stay for `keep_decisions`, then go once nothing of theirs is prepared.
    assert_eq!(fleet.recover(KEEP).await.decisions_removed, 0);
    assert_eq!(fleet.recover(Duration::ZERO).await.decisions_removed, 1);
    assert_eq!(fleet.decisions(0).await, Vec::<String>::new());

    // One participant: a plain COMMIT.
    let mut a = fleet.open(0, 2).await;
    let outcome = commit(&instance(), &mut [(shard(0), &mut a.client)])
        .await
        .expect("commit");
    assert_eq!(
        outcome,
        CommitOutcome::Committed {
            gid: None,
            unfinished: vec![]
        }
    );

    // One participant whose transaction had failed: rolled back.
    let mut a = fleet.open(0, 9).await;
    a.client
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    let outcome = commit(&instance(), &mut [(shard(0), &mut a.client)])
        .await
        .expect("rolled back");
    assert_eq!(outcome, CommitOutcome::RolledBack { shard: shard(0) });

    // ROLLBACK before commit: a plain rollback everywhere.
    let (mut a, mut b) = (fleet.open(0, 3).await, fleet.open(1, 103).await);
    let failed = rollback(&mut [(shard(0), &mut a.client), (shard(1), &mut b.client)]).await;
    assert_eq!(failed, Vec::new());

    // A deferred constraint fails at PREPARE: the client gets that error, and nothing is applied.
    let (mut a, mut b) = (fleet.open(0, 4).await, fleet.open(1, 104).await);
    b.client
        .batch_execute("INSERT INTO uniq VALUES (1), (1)")
        .await
        .expect("deferred until commit");
    let e = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect_err("unique violation at PREPARE");
    let TwoPhaseError::Aborted {
        shard: refused,
        step: CommitStep::Prepare,
        source: ParticipantError::Server { code, .. },
    } = &e
    else {
        panic!("not a PREPARE refusal: {e:?}");
    };
    assert_eq!(
        (*refused, code.as_str(), e.sqlstate()),
        (shard(1), "23505", "23505")
    );

    // The same on the coordinator, where it fails at the decision's COMMIT: the prepared one rolls back.
    let (mut a, mut b) = (fleet.open(0, 8).await, fleet.open(1, 108).await);
    a.client
        .batch_execute("INSERT INTO uniq VALUES (1), (1)")
        .await
        .expect("deferred until commit");
    let e = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect_err("unique violation at COMMIT");
    assert!(
        matches!(
            &e,
            TwoPhaseError::Aborted {
                step: CommitStep::Decide,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.sqlstate(), "23505");
    assert_eq!(fleet.prepared().await, Vec::<String>::new());

    // A participant whose transaction had failed: everything rolls back, as COMMIT does in PostgreSQL.
    let (mut a, mut b) = (fleet.open(0, 5).await, fleet.open(1, 105).await);
    b.client
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    let outcome = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect("rolled back");
    assert_eq!(outcome, CommitOutcome::RolledBack { shard: shard(1) });

    // The same on the coordinator.
    let (mut a, mut b) = (fleet.open(0, 6).await, fleet.open(1, 106).await);
    a.client
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    let outcome = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect("rolled back");
    assert_eq!(outcome, CommitOutcome::RolledBack { shard: shard(0) });

    // A participant's backend killed before the commit: refused with the lost connection.
    let (mut a, mut b) = (fleet.open(0, 7).await, fleet.open(1, 107).await);
    fleet.admins[1]
        .execute("SELECT pg_terminate_backend($1)", &[&b.pid])
        .await
        .expect("terminate");
    let e = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect_err("participant gone");
    assert!(
        matches!(
            &e,
            TwoPhaseError::Aborted {
                step: CommitStep::Prepare,
                ..
            }
        ),
        "{e:?}"
    );

    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![1, 2], vec![101]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());
    assert!(fleet.recover(KEEP).await.is_quiet());
}

/// After which step the simulated pgfleet dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kill {
    Start,
    Prepare,
    Decision,
    OneCommitPrepared,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_step_ends_all_or_nothing_once_recovery_ran() {
    // Shard 0 on one server, shards 1 and 2 on the other: three participants.
    let fleet = fleet(&[0, 1, 1], true).await;
    fleet.recover(KEEP).await;
    for (i, kill) in [
        Kill::Start,
        Kill::Prepare,
        Kill::Decision,
        Kill::OneCommitPrepared,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 * i as i32;
        let mut parts = vec![
            fleet.open(0, id).await,
            fleet.open(1, id + 1).await,
            fleet.open(2, id + 2).await,
        ];
        // Half of them started by another pgfleet instance: recovery resolves those too.
        let started_by = if i % 2 == 0 {
            instance()
        } else {
            InstanceId::new("another_pgfleet_1").expect("instance id")
        };
        let base = start(&started_by, shard(0), &mut parts[0].client)
            .await
            .expect("start");
        if kill > Kill::Start {
            for n in [1, 2] {
                let gid = base.gid(shard(n));
                assert!(
                    prepare(&gid, &mut parts[n as usize].client)
                        .await
                        .expect("prepare")
                );
            }
        }
        if kill > Kill::Prepare {
            assert!(decide(&base, &mut parts[0].client).await.expect("decide"));
        }
        if kill > Kill::Decision {
            commit_prepared(&base.gid(shard(1)), &mut parts[1].client)
                .await
                .expect("commit prepared");
        }
        fleet.crash(parts).await;

        let report = fleet.recover(KEEP).await;
        let (committed, rolled_back) = match kill {
            Kill::Start => (0, 0),
            Kill::Prepare => (0, 2),
            Kill::Decision => (2, 0),
            Kill::OneCommitPrepared => (1, 0),
        };
        assert_eq!(
            (
                report.committed.len(),
                report.rolled_back.len(),
                report.waiting.len()
            ),
            (committed, rolled_back, 0),
            "{kill:?}: {report:?}"
        );
        assert_eq!(fleet.prepared().await, Vec::<String>::new(), "{kill:?}");
        let applied = kill >= Kill::Decision;
        let on0 = fleet.ids(0).await.contains(&id);
        let on1 = fleet.ids(1).await;
        assert_eq!(
            (on0, on1.contains(&(id + 1)), on1.contains(&(id + 2))),
            (applied, applied, applied),
            "{kill:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_waits_while_the_coordinator_is_open_and_the_periodic_task_finishes_a_crashed_commit() {
    let fleet = fleet(&[0, 1], true).await;
    fleet.recover(KEEP).await;
    let (mut a, mut b) = (fleet.open(0, 1).await, fleet.open(1, 101).await);
    let base = start(&instance(), shard(0), &mut a.client).await.expect("start");
    let gid = base.gid(shard(1));
    assert!(prepare(&gid, &mut b.client).await.expect("prepare"));

    let report = fleet.recover(KEEP).await;
    assert_eq!(report.waiting, vec![(gid.clone(), WaitReason::InProgress)]);
    assert_eq!(fleet.prepared().await, vec![gid.to_string()]);

    // The commit goes on undisturbed.
    assert!(decide(&base, &mut a.client).await.expect("decide"));
    commit_prepared(&gid, &mut b.client)
        .await
        .expect("commit prepared");
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![1], vec![101]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());

    // The periodic task finishes what a crash after the decision left prepared.
    let recovery =
        Recovery::new(fleet.targets.clone(), login(APP_USER), recovery_options(KEEP)).expect("recovery");
    let task = spawn_recovery(Arc::new(recovery), Duration::from_millis(200));
    let (mut a, mut b) = (fleet.open(0, 2).await, fleet.open(1, 102).await);
    let base = start(&instance(), shard(0), &mut a.client).await.expect("start");
    assert!(
        prepare(&base.gid(shard(1)), &mut b.client)
            .await
            .expect("prepare")
    );
    assert!(decide(&base, &mut a.client).await.expect("decide"));
    fleet.crash(vec![a, b]).await;
    let finished = wait_until(Duration::from_secs(10), async || {
        fleet.prepared().await.is_empty()
    })
    .await;
    task.abort();
    assert!(finished.is_some(), "still prepared: {:?}", fleet.prepared().await);
    assert_eq!(
        (fleet.ids(0).await, fleet.ids(1).await),
        (vec![1, 2], vec![101, 102])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_primary_killed_while_prepared_gets_the_decision_after_restart() {
    let mut fleet = fleet(&[0, 1], true).await;
    fleet.recover(KEEP).await;

    // The participant's server dies between the decision and its COMMIT PREPARED: the client's commit
    // stands, and recovery commits its part once the server is back.
    let (mut a, mut b) = (fleet.open(0, 1).await, fleet.open(1, 101).await);
    let base = start(&instance(), shard(0), &mut a.client).await.expect("start");
    let gid = base.gid(shard(1));
    assert!(prepare(&gid, &mut b.client).await.expect("prepare"));
    assert!(decide(&base, &mut a.client).await.expect("decide"));
    tokio::task::block_in_place(|| fleet.servers[1].primary.kill()).expect("kill -9");
    let e = commit_prepared(&gid, &mut b.client)
        .await
        .expect_err("server gone");
    assert!(!e.is_server(), "{e:?}");
    tokio::task::block_in_place(|| fleet.servers[1].primary.start()).expect("restart");
    fleet.reconnect(1).await;
    assert_eq!(
        fleet.prepared().await,
        vec![gid.to_string()],
        "survives the crash"
    );
    let report = fleet.recover(KEEP).await;
    assert_eq!(report.committed, vec![gid]);
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![1], vec![101]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());

    // The coordinator's server dies before the decision: its transaction is gone, so recovery rolls back
    // the prepared participant.
    let (mut a, mut b) = (fleet.open(0, 2).await, fleet.open(1, 102).await);
    let base = start(&instance(), shard(0), &mut a.client).await.expect("start");
    let gid = base.gid(shard(1));
    assert!(prepare(&gid, &mut b.client).await.expect("prepare"));
    tokio::task::block_in_place(|| fleet.servers[0].primary.kill()).expect("kill -9");
    drop(a);
    tokio::task::block_in_place(|| fleet.servers[0].primary.start()).expect("restart");
    fleet.reconnect(0).await;
    let report = fleet.recover(KEEP).await;
    assert_eq!(report.rolled_back, vec![gid]);
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![1], vec![101]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_that_may_not_write_decisions_or_finish_transactions_are_told_what_to_do() {
    let fleet = fleet(&[0, 1], true).await;
    fleet.recover(KEEP).await;
    for admin in &fleet.admins {
        admin
            .batch_execute(&format!(
                "CREATE ROLE other LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON accounts TO other"
            ))
            .await
            .expect("role");
    }

    // A client role recovery was not told about may not record decisions.
    let (mut a, mut b) = (
        fleet.open_as("other", 0, 1).await,
        fleet.open_as("other", 1, 101).await,
    );
    let e = commit(
        &instance(),
        &mut [(shard(0), &mut a.client), (shard(1), &mut b.client)],
    )
    .await
    .expect_err("not a writer");
    assert!(matches!(e, TwoPhaseError::DecisionTable { .. }), "{e:?}");
    assert_eq!(e.sqlstate(), "42501");
    let hint = e.hint().expect("hint");
    assert!(
        hint.contains("GRANT INSERT ON pgfleet.commit_decisions"),
        "{hint}"
    );
    assert_eq!((fleet.ids(0).await, fleet.ids(1).await), (vec![], vec![]));
    assert_eq!(fleet.prepared().await, Vec::<String>::new());

    // A recovery role that is neither the preparing role nor a superuser is told so.
    for admin in &fleet.admins {
        admin
            .batch_execute(
                "GRANT USAGE ON SCHEMA pgfleet TO other; \
                 GRANT SELECT, DELETE ON pgfleet.commit_decisions TO other",
            )
            .await
            .expect("grants");
    }
    let (mut a, mut b) = (fleet.open(0, 2).await, fleet.open(1, 102).await);
    let base = start(&instance(), shard(0), &mut a.client).await.expect("start");
    let gid = base.gid(shard(1));
    assert!(prepare(&gid, &mut b.client).await.expect("prepare"));
    fleet.crash(vec![a, b]).await;
    let report = recover_once(&fleet.targets, &login("other"), &recovery_options(KEEP))
        .await
        .expect("recovery");
    let [failure] = report.failures.as_slice() else {
        panic!("one failure expected: {report:?}");
    };
    let message = failure.error.to_string();
    assert!(
        message.contains("prepared by role \"app\"") && message.contains("\"other\" a superuser"),
        "{message}"
    );
    assert_eq!(fleet.prepared().await, vec![gid.to_string()]);
    assert_eq!(fleet.recover(KEEP).await.rolled_back, vec![gid]);
    assert_eq!(fleet.prepared().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_check_names_a_primary_that_cannot_prepare() {
    let fleet = fleet(&[0], false).await;
    let e = check_prepared_transactions(&fleet.targets, &login(APP_USER))
        .await
        .expect_err("max_prepared_transactions = 0");
    assert!(
        matches!(&e, StartCheckError::PreparedTransactionsDisabled { node, .. } if node == "s0"),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("\"s0\"") && message.contains("max_prepared_transactions = 0"),
        "{message}"
    );

    // A recovery role that may not create the decision table is told what to grant.
    fleet.admins[0]
        .batch_execute(&format!("CREATE ROLE weak LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .expect("role");
    let report = recover_once(&fleet.targets, &login("weak"), &recovery_options(KEEP))
        .await
        .expect("recovery");
    let [failure] = report.failures.as_slice() else {
        panic!("one failure expected: {report:?}");
    };
    assert!(
        matches!(&failure.error, RecoveryError::DecisionTable { user, .. } if user == "weak"),
        "{failure:?}"
    );
    let message = failure.error.to_string();
    assert!(
        message.contains("GRANT CREATE ON DATABASE \"app\" TO \"weak\""),
        "{message}"
    );
}
