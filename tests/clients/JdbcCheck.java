import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

/**
 * pgjdbc through pgfleet: every check asserts the result and which node served it.
 *
 * <p>Usage: {@code java -cp <classes>:/usr/share/java/postgresql.jar JdbcCheck JDBC_URL USER PASSWORD
 * PRIMARY_PORT [REPLICA_PORT...]}. The URL carries {@code prepareThreshold=3}, so a PreparedStatement switches
 * to a named server-side statement on its third execution, as most applications do. Each section runs on its
 * own connections, under a deadline; a failing section is reported and the others still run. Exits 0 only if
 * every check passed.
 *
 * <p>pgfleet's read-your-writes (routing.read_your_writes = "session", the default) sends a session's reads to
 * the primary until a replica has replayed that session's last write. So a check that a read ran on a replica
 * either uses a session that has not written, or first waits for the replicas ({@link #waitReplicasSee}, on a
 * fresh connection) and for the session's reads to come back to them ({@link #settle}).
 */
public final class JdbcCheck {
    private static final long SECTION_TIMEOUT_SECONDS = 30;

    private static String url;
    private static String user;
    private static String password;
    private static int primary;
    private static final Set<Integer> replicas = new HashSet<>();
    private static final List<String> failures = new ArrayList<>();

    /** A failed expectation. */
    static final class CheckFailed extends RuntimeException {
        CheckFailed(String message) {
            super(message);
        }
    }

    interface Section {
        void run() throws Exception;
    }

    static void check(boolean cond, String message) {
        if (!cond) {
            throw new CheckFailed(message);
        }
    }

    static Connection connect() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("connectTimeout", "10");
        return DriverManager.getConnection(url, props);
    }

    static int port(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT inet_server_port()")) {
            check(rs.next(), "no row from SELECT inet_server_port()");
            return rs.getInt(1);
        }
    }

    static long count(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row from " + sql);
            return rs.getLong(1);
        }
    }

    static void onReplica(int p, String what) {
        check(replicas.contains(p), what + ": served by port " + p + ", expected a replica " + replicas);
    }

    static void onPrimary(int p, String what) {
        check(p == primary, what + ": served by port " + p + ", expected the primary " + primary);
    }

    /**
     * Reads {@code query} through pgfleet on a fresh session that never wrote until every replica has answered
     * {@code expected}. Under the default {@code global} consistency a read that no replica has caught up with
     * yet is answered by the primary, so primary answers are allowed here but count for nothing.
     */
    static void waitReplicasSee(String query, long expected, String what) throws Exception {
        java.util.Map<Integer, Long> last = new java.util.HashMap<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        try (Connection c = connect()) {
            while (System.nanoTime() < deadline) {
                try (Statement s = c.createStatement();
                        ResultSet rs = s.executeQuery("SELECT inet_server_port(), (" + query + ")")) {
                    rs.next();
                    int p = rs.getInt(1);
                    check(replicas.contains(p) || p == primary, what + ": served by unknown port " + p);
                    if (replicas.contains(p)) {
                        last.put(p, rs.getLong(2));
                    }
                }
                if (last.keySet().equals(replicas) && last.values().stream().allMatch(v -> v == expected)) {
                    return;
                }
                Thread.sleep(50);
            }
        }
        throw new CheckFailed(what + ": replicas did not all answer " + expected + " within 15s: " + last);
    }

    /** After a session wrote: waits until its (autocommit) reads are served by replicas again. */
    static void settle(Connection c, String what) throws Exception {
        List<Integer> seen = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (System.nanoTime() < deadline) {
            int p = port(c);
            if (replicas.contains(p)) {
                return;
            }
            seen.add(p);
            Thread.sleep(50);
        }
        throw new CheckFailed(what + ": reads never came back to a replica within 10s (ports " + seen + ")");
    }

    static void section(ExecutorService pool, String name, Section body) {
        long started = System.nanoTime();
        Future<?> f = pool.submit(() -> {
            body.run();
            return null;
        });
        try {
            f.get(SECTION_TIMEOUT_SECONDS, TimeUnit.SECONDS);
            System.out.printf("ok    %s (%.2fs)%n", name, (System.nanoTime() - started) / 1e9);
        } catch (TimeoutException e) {
            f.cancel(true);
            fail(name, "no answer within " + SECTION_TIMEOUT_SECONDS + "s (hung waiting for the server through pgfleet)");
        } catch (java.util.concurrent.ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof CheckFailed) {
                fail(name, cause.getMessage());
            } else {
                fail(name, "unexpected " + cause);
                cause.printStackTrace();
            }
        } catch (InterruptedException e) {
            fail(name, "interrupted");
        }
    }

    static void fail(String name, String message) {
        failures.add(name + ": " + message);
        System.out.println("FAIL  " + name + ": " + message);
    }

    static void setup() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("CREATE TABLE jitems (id int PRIMARY KEY, name text NOT NULL, qty int)");
            s.execute("INSERT INTO jitems SELECT g, 'seed ' || g, g FROM generate_series(1, 100) g");
            // This session just wrote: read-your-writes keeps its reads on the primary until pgfleet has seen a
            // replica replay the write. Once both replicas have the rows, its reads must come back to them and
            // use both; until pgfleet notices, the primary is what the routing rules allow.
            waitReplicasSee("SELECT count(*) FROM jitems", 100, "setup replicated");
            Set<Integer> seen = new HashSet<>();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (!seen.equals(replicas) && System.nanoTime() < deadline) {
                // The port tells the node: pg_is_in_recovery() is a question about the server's role, which
                // pgfleet has the primary answer.
                try (ResultSet rs = s.executeQuery("SELECT inet_server_port()")) {
                    rs.next();
                    int p = rs.getInt(1);
                    if (p == primary) {
                        Thread.sleep(50);
                        continue;
                    }
                    onReplica(p, "autocommit Statement SELECT");
                    seen.add(p);
                }
            }
            check(seen.equals(replicas), "reads should use both replicas, saw " + seen);
            try (ResultSet rs = s.executeQuery("INSERT INTO jitems VALUES (101, 'returning', 1) RETURNING inet_server_port()")) {
                rs.next();
                onPrimary(rs.getInt(1), "INSERT ... RETURNING");
            }
            // The next section opens a fresh session and expects its reads on the replicas; under the default
            // global consistency they stay on the primary until a replica has replayed this write.
            waitReplicasSee("SELECT count(*) FROM jitems", 101, "INSERT ... RETURNING replicated");
        }
    }

    static void preparedStatements() throws Exception {
        try (Connection c = connect();
                PreparedStatement ps = c.prepareStatement("SELECT inet_server_port(), ?::int")) {
            List<Integer> ports = new ArrayList<>();
            for (int i = 0; i < 20; i++) {
                ps.setInt(1, i * 3);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "execution " + i + ": no row");
                    check(rs.getInt(2) == i * 3, "execution " + i + ": got " + rs.getInt(2));
                    ports.add(rs.getInt(1));
                    check(!rs.next(), "execution " + i + ": more than one row");
                }
            }
            for (int p : ports) {
                onReplica(p, "PreparedStatement SELECT");
            }
            check(new HashSet<>(ports).equals(replicas), "the prepared statement should run on both replicas: " + ports);
            check(ps.unwrap(PGStatement.class).isUseServerPrepare(),
                    "after 20 executions pgjdbc uses a named server-side statement (prepareThreshold=3)");
            // A prepared write, past the threshold: always the primary.
            try (PreparedStatement ins = c.prepareStatement(
                    "INSERT INTO jitems VALUES (?, ?, ?) RETURNING inet_server_port()")) {
                for (int i = 0; i < 6; i++) {
                    ins.setInt(1, 200 + i);
                    ins.setString(2, "prepared " + i);
                    ins.setInt(3, i);
                    try (ResultSet rs = ins.executeQuery()) {
                        rs.next();
                        onPrimary(rs.getInt(1), "prepared INSERT execution " + i);
                    }
                }
            }
            // Types through the binary transfer pgjdbc uses for named statements.
            try (PreparedStatement typed = c.prepareStatement(
                    "SELECT ?::int8 + 1, ?::float8 * 2, ?::text || '!', ?::bytea, ?::numeric, ?::timestamptz")) {
                java.sql.Timestamp ts = java.sql.Timestamp.valueOf("2024-02-29 12:34:56.789");
                for (int i = 0; i < 5; i++) {
                    typed.setLong(1, 9_000_000_000L + i);
                    typed.setDouble(2, 1.25);
                    typed.setString(3, "héllo");
                    typed.setBytes(4, new byte[] {0, 1, (byte) 255});
                    typed.setBigDecimal(5, new java.math.BigDecimal("12.345"));
                    typed.setTimestamp(6, ts);
                    try (ResultSet rs = typed.executeQuery()) {
                        rs.next();
                        check(rs.getLong(1) == 9_000_000_001L + i, "int8: " + rs.getLong(1));
                        check(rs.getDouble(2) == 2.5, "float8: " + rs.getDouble(2));
                        check(rs.getString(3).equals("héllo!"), "text: " + rs.getString(3));
                        check(java.util.Arrays.equals(rs.getBytes(4), new byte[] {0, 1, (byte) 255}), "bytea");
                        check(rs.getBigDecimal(5).compareTo(new java.math.BigDecimal("12.345")) == 0, "numeric");
                        check(rs.getTimestamp(6).equals(ts), "timestamptz: " + rs.getTimestamp(6));
                    }
                }
            }
        }
    }

    static void batches() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jitems (id, name, qty) VALUES (?, ?, ?)")) {
                for (int i = 1000; i < 1200; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "batch " + i);
                    ps.setInt(3, i % 10);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 200, "executeBatch returned " + counts.length + " counts");
                for (int n : counts) {
                    check(n == 1 || n == Statement.SUCCESS_NO_INFO, "batch count " + n);
                }
            }
            try (Statement s = c.createStatement()) {
                s.addBatch("UPDATE jitems SET qty = qty + 100 WHERE id BETWEEN 1000 AND 1009");
                s.addBatch("DELETE FROM jitems WHERE id = 1199");
                s.addBatch("INSERT INTO jitems VALUES (1199, 'batch again', 0)");
                int[] counts = s.executeBatch();
                check(java.util.Arrays.equals(counts, new int[] {10, 1, 1}),
                        "Statement batch counts " + java.util.Arrays.toString(counts));
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery(
                            "SELECT count(*), sum(qty), inet_server_port() FROM jitems WHERE id BETWEEN 1000 AND 1199")) {
                rs.next();
                check(rs.getLong(1) == 200, "rows written by executeBatch: " + rs.getLong(1));
                check(rs.getLong(2) == 200 / 10 * 45 + 1000 - 9, "qty after the batches: " + rs.getLong(2));
                onPrimary(rs.getInt(3), "read in a transaction after the batch");
            }
            c.commit();
            c.setAutoCommit(true);
            waitReplicasSee("SELECT count(*) FROM jitems WHERE id BETWEEN 1000 AND 1199", 200, "replicated batch");
            // A failing batch reports the SQLSTATE of the failed statement.
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jitems (id, name, qty) VALUES (?, ?, ?)")) {
                for (int id : new int[] {1300, 1301, 1000}) {
                    ps.setInt(1, id);
                    ps.setString(2, "dup batch");
                    ps.setInt(3, 0);
                    ps.addBatch();
                }
                ps.executeBatch();
                throw new CheckFailed("a batch with a duplicate key succeeded");
            } catch (BatchUpdateException e) {
                check("23505".equals(e.getSQLState()), "batch failure SQLSTATE " + e.getSQLState());
            }
        }
    }

    static void transactions() throws Exception {
        try (Connection c = connect(); Connection other = connect()) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO jitems VALUES (400, 'uncommitted', 4)");
                try (ResultSet rs = s.executeQuery("SELECT name, inet_server_port() FROM jitems WHERE id = 400")) {
                    check(rs.next() && rs.getString(1).equals("uncommitted"), "the transaction reads its own write");
                    onPrimary(rs.getInt(2), "read of an uncommitted write");
                }
                try (Statement o = other.createStatement();
                        ResultSet rs = o.executeQuery(
                                "/* pgfleet:primary */ SELECT count(*), inet_server_port() FROM jitems WHERE id = 400")) {
                    rs.next();
                    check(rs.getLong(1) == 0, "another session must not see the uncommitted row");
                    onPrimary(rs.getInt(2), "hinted read on another connection");
                }
                // A PreparedStatement executed past prepareThreshold inside the transaction.
                try (PreparedStatement ps = c.prepareStatement("SELECT qty, inet_server_port() FROM jitems WHERE id = ?")) {
                    for (int i = 0; i < 5; i++) {
                        ps.setInt(1, 400);
                        try (ResultSet rs = ps.executeQuery()) {
                            check(rs.next() && rs.getInt(1) == 4, "prepared read in the transaction");
                            onPrimary(rs.getInt(2), "prepared read in the transaction");
                        }
                    }
                }
            }
            c.commit();
            c.setAutoCommit(true);
            waitReplicasSee("SELECT count(*) FROM jitems WHERE id = 400", 1, "committed row replicated");
            // Rollback.
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO jitems VALUES (401, 'rolled back', 4)");
            }
            c.rollback();
            check(count(c, "SELECT count(*) FROM jitems WHERE id = 401") == 0, "rolled-back row is gone");
            c.commit();
            // A cursor-based fetch (portal with a fetch size) in a read-write transaction.
            try (Statement s = c.createStatement()) {
                s.setFetchSize(7);
                try (ResultSet rs = s.executeQuery("SELECT id, inet_server_port() FROM jitems WHERE id <= 100 ORDER BY id")) {
                    int n = 0;
                    Set<Integer> ports = new HashSet<>();
                    while (rs.next()) {
                        n++;
                        check(rs.getInt(1) == n, "fetch-size row " + n + " is " + rs.getInt(1));
                        ports.add(rs.getInt(2));
                    }
                    check(n == 100, "fetch-size rows " + n);
                    check(ports.size() == 1, "one portal, one node: " + ports);
                    onPrimary(ports.iterator().next(), "fetch-size query in a read-write transaction");
                }
            }
            c.commit();
        }
    }

    static void readOnly() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            c.setReadOnly(true);
            Set<Integer> ports = new HashSet<>();
            try (Statement s = c.createStatement()) {
                for (int i = 0; i < 3; i++) {
                    try (ResultSet rs = s.executeQuery("SELECT inet_server_port(), current_setting('transaction_read_only')")) {
                        rs.next();
                        ports.add(rs.getInt(1));
                        check(rs.getString(2).equals("on"), "transaction_read_only = " + rs.getString(2));
                    }
                }
                check(ports.size() == 1, "one read-only transaction used several backends: " + ports);
                onReplica(ports.iterator().next(), "setReadOnly(true) transaction (BEGIN READ ONLY)");
                s.setFetchSize(10);
                try (ResultSet rs = s.executeQuery("SELECT id, inet_server_port() FROM jitems WHERE id <= 100 ORDER BY id")) {
                    int n = 0;
                    while (rs.next()) {
                        n++;
                        check(rs.getInt(2) == ports.iterator().next(), "fetch-size rows from the transaction's node");
                    }
                    check(n == 100, "fetch-size rows in the read-only transaction: " + n);
                }
                try {
                    s.executeUpdate("INSERT INTO jitems VALUES (402, 'ro', 0)");
                    throw new CheckFailed("INSERT in a read-only transaction succeeded");
                } catch (SQLException e) {
                    check("25006".equals(e.getSQLState()), "read-only INSERT SQLSTATE " + e.getSQLState());
                }
            }
            c.rollback();
            c.setReadOnly(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO jitems VALUES (403, 'rw again', 0)");
                onPrimary(port(c), "read-write transaction after setReadOnly(false)");
            }
            c.commit();
        }
    }

    static void serializableAndLargeObjects() throws Exception {
        try (Connection c = connect()) {
            // setTransactionIsolation sends SET SESSION CHARACTERISTICS; a standby refuses serializable
            // isolation, read-only or not, so the transaction runs on the primary.
            c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            c.setAutoCommit(false);
            c.setReadOnly(true);
            try (Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery("SELECT inet_server_port(), current_setting('transaction_isolation')")) {
                check(rs.next(), "no row in the serializable transaction");
                onPrimary(rs.getInt(1), "serializable read-only transaction");
                check(rs.getString(2).equals("serializable"), "isolation " + rs.getString(2));
            }
            c.commit();
            c.setReadOnly(false);
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            // The large-object API calls lo_creat, lo_open, lowrite and loread by FunctionCall messages.
            LargeObjectManager lom = c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO(LargeObjectManager.READWRITE);
            byte[] data = new byte[100_000];
            for (int i = 0; i < data.length; i++) {
                data[i] = (byte) (i * 7);
            }
            LargeObject w = lom.open(oid, LargeObjectManager.WRITE);
            w.write(data);
            w.close();
            c.commit();
            LargeObject r = lom.open(oid, LargeObjectManager.READ);
            byte[] back = r.read(data.length + 1);
            r.close();
            check(java.util.Arrays.equals(back, data), "large object read back: " + back.length + " bytes");
            lom.delete(oid);
            c.commit();
        }
    }

    static void errors() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            try {
                s.executeUpdate("INSERT INTO jitems VALUES (1, 'dup', 0)");
                throw new CheckFailed("duplicate insert succeeded");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "duplicate key SQLSTATE " + e.getSQLState());
                check(e instanceof PSQLException, "a PSQLException: " + e.getClass());
                ServerErrorMessage m = ((PSQLException) e).getServerErrorMessage();
                check(m != null, "server error message present");
                check("jitems_pkey".equals(m.getConstraint()), "constraint " + m.getConstraint());
                check("Key (id)=(1) already exists.".equals(m.getDetail()), "detail " + m.getDetail());
                check("jitems".equals(m.getTable()) && "public".equals(m.getSchema()), "table " + m.getTable());
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jitems VALUES (?, 'dup', 0)")) {
                for (int i = 0; i < 4; i++) { // past prepareThreshold: the error comes from a named statement
                    ps.setInt(1, 2);
                    try {
                        ps.executeUpdate();
                        throw new CheckFailed("prepared duplicate insert succeeded");
                    } catch (SQLException e) {
                        check("23505".equals(e.getSQLState()), "prepared duplicate SQLSTATE " + e.getSQLState());
                    }
                }
            }
            try {
                s.executeQuery("SELECT 1/0");
                throw new CheckFailed("division by zero succeeded");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "division by zero SQLSTATE " + e.getSQLState());
            }
            settle(c, "reads after errors");
        }
    }

    static void metadata() throws Exception {
        try (Connection c = connect()) {
            DatabaseMetaData md = c.getMetaData();
            check(md.getDatabaseProductName().equals("PostgreSQL"), "product " + md.getDatabaseProductName());
            check(md.getDatabaseMajorVersion() >= 10, "server major version " + md.getDatabaseMajorVersion());
            try (ResultSet rs = md.getTables(null, "public", "jitems", new String[] {"TABLE"})) {
                check(rs.next(), "getTables finds jitems");
                check(rs.getString("TABLE_NAME").equals("jitems"), "TABLE_NAME " + rs.getString("TABLE_NAME"));
                check(!rs.next(), "getTables returns one row");
            }
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "jitems", null)) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME"));
                }
            }
            check(columns.equals(List.of("id", "name", "qty")), "getColumns " + columns);
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "jitems")) {
                check(rs.next() && rs.getString("COLUMN_NAME").equals("id"), "getPrimaryKeys");
            }
        }
    }

    /** Runs pg_sleep(10) and cancels it from another thread after one second. */
    static void cancelDuring(Connection c, String where) throws Exception {
        try (Statement s = c.createStatement()) {
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(1000);
                    s.cancel();
                } catch (Exception e) {
                    System.out.println("cancel thread: " + e);
                }
            });
            long started = System.nanoTime();
            canceller.start();
            try {
                s.executeQuery("SELECT pg_sleep(10)");
                throw new CheckFailed(where + ": pg_sleep(10) was not cancelled");
            } catch (SQLException e) {
                double elapsed = (System.nanoTime() - started) / 1e9;
                check("57014".equals(e.getSQLState()), where + ": SQLSTATE " + e.getSQLState() + " " + e.getMessage());
                check(elapsed < 5.0, where + ": cancelled only after " + elapsed + "s");
            } finally {
                canceller.join();
            }
        }
    }

    static void cancel() throws Exception {
        try (Connection c = connect()) {
            cancelDuring(c, "Statement.cancel() on a replica read");
            onReplica(port(c), "read after a cancel");
            c.setAutoCommit(false);
            onPrimary(port(c), "transaction before a cancel");
            cancelDuring(c, "Statement.cancel() inside a transaction (primary)");
            c.rollback();
            c.setAutoCommit(true);
            check(count(c, "SELECT 42") == 42, "connection usable after cancels");
        }
    }

    static void queryTimeout() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.setQueryTimeout(1);
            long started = System.nanoTime();
            try {
                s.executeQuery("SELECT pg_sleep(5)");
                throw new CheckFailed("pg_sleep(5) with setQueryTimeout(1) was not cancelled");
            } catch (SQLException e) {
                double elapsed = (System.nanoTime() - started) / 1e9;
                check("57014".equals(e.getSQLState()), "query timeout SQLSTATE " + e.getSQLState() + " " + e.getMessage());
                check(elapsed < 4.0, "query timeout after " + elapsed + "s");
            }
            s.setQueryTimeout(0);
            onReplica(port(c), "read after a query timeout");
            // The same on a prepared statement past the threshold, in a transaction (primary).
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT pg_sleep(?), inet_server_port()")) {
                for (int i = 0; i < 3; i++) {
                    ps.setDouble(1, 0.01);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        onPrimary(rs.getInt(2), "prepared pg_sleep in a transaction");
                    }
                }
                ps.setQueryTimeout(1);
                ps.setDouble(1, 5);
                try {
                    ps.executeQuery();
                    throw new CheckFailed("prepared pg_sleep(5) with setQueryTimeout(1) was not cancelled");
                } catch (SQLException e) {
                    check("57014".equals(e.getSQLState()), "prepared query timeout SQLSTATE " + e.getSQLState());
                }
            }
            c.rollback();
        }
    }

    /** A port nothing listens on: bound, then released. */
    static int closedPort() throws Exception {
        try (java.net.ServerSocket socket = new java.net.ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return socket.getLocalPort();
        }
    }

    /** Connects with {@code jdbcUrl}; null when pgjdbc refuses, with the reason in {@code why}. */
    static Connection tryConnect(String jdbcUrl, List<String> why) {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("connectTimeout", "10");
        try {
            return DriverManager.getConnection(jdbcUrl, props);
        } catch (SQLException e) {
            why.add(e.getMessage());
            return null;
        }
    }

    /**
     * pgjdbc's {@code targetServerType}: it asks {@code SHOW transaction_read_only} (and reads the greeting's
     * {@code in_hot_standby}) to tell a primary. pgfleet takes writes, so it must pass for a primary, through
     * a multi-host URL whose first host is down as well, and still send the session's reads to replicas.
     */
    static void targetServerType() throws Exception {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("^jdbc:postgresql://([^/]+)/([^?]*)").matcher(url);
        check(m.find(), "cannot read host:port/database from " + url);
        String hostPort = m.group(1);
        String database = m.group(2);
        String down = "127.0.0.1:" + closedPort();
        String[][] cases = {
            {"primary", hostPort},
            {"master", hostPort},
            {"preferPrimary", hostPort},
            {"any", hostPort},
            {"preferSecondary", hostPort},
            {"primary", down + "," + hostPort},
            {"preferPrimary", down + "," + hostPort},
        };
        for (String[] c : cases) {
            String target = "jdbc:postgresql://" + c[1] + "/" + database + "?targetServerType=" + c[0]
                + "&hostRecheckSeconds=0";
            List<String> why = new ArrayList<>();
            try (Connection conn = tryConnect(target, why)) {
                check(conn != null, target + " refused: " + why);
                try (Statement s = conn.createStatement()) {
                    try (ResultSet rs = s.executeQuery("SHOW transaction_read_only")) {
                        rs.next();
                        check(rs.getString(1).equals("off"), target + ": transaction_read_only = " + rs.getString(1));
                    }
                    s.execute("CREATE TEMP TABLE IF NOT EXISTS tst (x int)");
                }
            }
        }
        // A session that never wrote reads on a replica whatever targetServerType found, once the replicas have
        // replayed the temp tables made above (global consistency holds fresh sessions to every commit).
        waitReplicasSee("SELECT 1", 1, "replicas caught up after the temp tables");
        try (Connection conn = tryConnect("jdbc:postgresql://" + hostPort + "/" + database + "?targetServerType=primary",
                new ArrayList<>())) {
            check(conn != null, "targetServerType=primary refused");
            onReplica(port(conn), "a read after targetServerType=primary");
        }
        // As against a primary itself: a demand for a standby is refused.
        List<String> why = new ArrayList<>();
        try (Connection conn = tryConnect("jdbc:postgresql://" + hostPort + "/" + database + "?targetServerType=secondary", why)) {
            check(conn == null, "targetServerType=secondary connected to pgfleet, whose writes go to a primary");
            check(why.toString().contains("targetServerType"), "unexpected refusal: " + why);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: JdbcCheck JDBC_URL USER PASSWORD PRIMARY_PORT REPLICA_PORT...");
            System.exit(2);
        }
        url = args[0];
        user = args[1];
        password = args[2];
        primary = Integer.parseInt(args[3]);
        for (int i = 4; i < args.length; i++) {
            replicas.add(Integer.parseInt(args[i]));
        }
        System.out.println("pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_FULL_NAME + ", url " + url);
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        section(pool, "setup", JdbcCheck::setup);
        section(pool, "prepared_statements", JdbcCheck::preparedStatements);
        section(pool, "batches", JdbcCheck::batches);
        section(pool, "transactions", JdbcCheck::transactions);
        section(pool, "read_only", JdbcCheck::readOnly);
        section(pool, "serializable_and_large_objects", JdbcCheck::serializableAndLargeObjects);
        section(pool, "errors", JdbcCheck::errors);
        section(pool, "metadata", JdbcCheck::metadata);
        section(pool, "cancel", JdbcCheck::cancel);
        section(pool, "query_timeout", JdbcCheck::queryTimeout);
        section(pool, "target_server_type", JdbcCheck::targetServerType);
        if (!failures.isEmpty()) {
            System.err.println();
            System.err.println(failures.size() + " JDBC check(s) failed:");
            for (String f : failures) {
                System.err.println("  - " + f);
            }
            System.exit(1);
        }
        System.out.println("all JDBC checks passed");
        System.exit(0);
    }
}
